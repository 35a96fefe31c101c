"""What every encoder-classifier recipe shares: model and tokenizer loading, data
preparation, validation during training, the final evaluation and saving.

``train_teacher.py`` and ``train_student.py`` are thin wrappers around these.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from kd.batching import TokenizedSet, tokenize
from kd.checkpoint import write_json
from kd.config import ModelConfig, save_config
from kd.data import DataSplits, build_splits, write_split_file
from kd.inference import predict_tokenized, probabilities, scoring_autocast, scoring_precision_name
from kd.metrics import binary_metrics, choose_threshold, save_roc_png
from kd.runinfo import device_description, git_commit, library_versions
from kd.sources import LABEL_NAMES
from models.paths import NO_REMOTE_CODE, check_tokenizer, resolve_model_path


def load_tokenizer(name_or_path: str):
    """The model's tokenizer, checked against the model's config (:func:`check_tokenizer`).

    ``AutoTokenizer`` on the folder: in transformers 5 ``BertTokenizer(vocab_file=...)``
    silently ignores the vocabulary.
    """
    from transformers import AutoConfig, AutoTokenizer

    path = resolve_model_path(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path, **NO_REMOTE_CODE)
    check_tokenizer(tokenizer, AutoConfig.from_pretrained(path, **NO_REMOTE_CODE), name_or_path)
    return tokenizer


def build_classifier(cfg: ModelConfig, num_labels: int = 2) -> torch.nn.Module:
    """A sequence classifier with a fresh 2-way head on any HF encoder (SDPA attention)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = resolve_model_path(cfg.name_or_path)
    config = AutoConfig.from_pretrained(path, num_labels=num_labels, **NO_REMOTE_CODE)
    config.id2label = dict(enumerate(LABEL_NAMES))
    config.label2id = {name: i for i, name in enumerate(LABEL_NAMES)}
    if cfg.dropout is not None:
        for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout"):
            if hasattr(config, key):
                setattr(config, key, cfg.dropout)
    if cfg.pretrained:
        return AutoModelForSequenceClassification.from_pretrained(path, config=config, attn_implementation="sdpa",
                                                                  **NO_REMOTE_CODE)
    return AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa", **NO_REMOTE_CODE)


def prepare_data(data_cfg, tokenizer, max_length: int, log=print) -> tuple[DataSplits, dict[str, TokenizedSet]]:
    """Build the splits and tokenise every set once."""
    splits = build_splits(data_cfg)
    log(splits.report.summary())
    tokenized = {name: tokenize(ex, tokenizer, max_length) for name, ex in splits.all_sets().items()}
    return splits, tokenized


def cross_entropy_sum(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Hard-label cross-entropy summed over the batch (the loop normalises)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return torch.nn.functional.cross_entropy(logits.float(), batch["labels"], ignore_index=-100, reduction="sum")


def make_validator(data: TokenizedSet, batch_size: int, amp_dtype):
    """``evaluate(model) -> metrics`` on the validation set, scored under
    ``amp_dtype`` as the final evaluation will be: F1 etc. at threshold 0.5 and
    the threshold-free metrics (ROC-AUC, TPR at low FPR) that select the best
    checkpoint (``train.metric``, default ``roc_auc``: the deployed threshold is
    tuned afterwards, so F1 at 0.5 would rank checkpoints by the wrong cut)."""

    def evaluate(model) -> dict:
        probs = probabilities(predict_tokenized(model, data, batch_size=batch_size, autocast_dtype=amp_dtype))
        metrics = binary_metrics(data.labels, probs, 0.5)
        metrics.pop("confusion_matrix")
        return metrics

    return evaluate


def final_evaluation(model, tokenized: dict[str, TokenizedSet], batch_size: int, scoring_precision: str,
                     out_dir: Path) -> dict:
    """Choose the threshold on validation (max F1), apply it to every other set.

    Every set is scored in ``scoring_precision`` (``fp32``, ``bf16`` or ``fp16``
    autocast; a quantized precision runs as loaded), and the result records it
    beside the threshold: the threshold only holds for probabilities computed
    that way, so ``kd.predict``, ``kd.evaluate`` and ``quantize.py`` read both.
    Returns ``{"threshold": t, "scoring_precision": p, "sets": {name: metrics}}``
    and writes a ROC PNG.
    """
    amp_dtype = scoring_autocast(scoring_precision)
    probs = {
        name: probabilities(predict_tokenized(model, data, batch_size=batch_size, autocast_dtype=amp_dtype, progress=True))
        for name, data in tokenized.items()
        if name != "train"
    }
    threshold = choose_threshold(tokenized["validation"].labels, probs["validation"])
    results = {name: binary_metrics(tokenized[name].labels, p, threshold) for name, p in probs.items()}
    save_roc_png({name: (tokenized[name].labels, p) for name, p in probs.items()}, out_dir / "roc.png")
    return {"threshold": threshold, "scoring_precision": scoring_precision, "sets": results}


def run_info(cfg, splits: DataSplits, extra: dict | None = None) -> dict:
    """Everything needed to reproduce a run, written next to every checkpoint."""
    return {
        "config": dataclasses.asdict(cfg),
        "seed": cfg.train.seed,
        "versions": library_versions(),
        "git_commit": git_commit(),
        "device": device_description(),
        "data": splits.report.to_dict(),
        **(extra or {}),
    }


def make_saver(tokenizer, info: dict):
    """``save(model, folder)``: a ``save_pretrained`` folder that any HF tool loads."""

    def save(model, folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        write_json(folder / "run_info.json", info)

    return save


def start_run(cfg, out_dir: Path, splits: DataSplits) -> None:
    """Write the resolved config and the exact split next to the run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    write_split_file(splits, out_dir / "splits.csv")
    write_json(out_dir / "data_report.json", splits.report.to_dict())


def format_table(results: dict, title: str = "") -> str:
    """A fixed-width table of the headline metrics per evaluated set."""
    cols = ("n", "accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "ece")
    head = f"{'set':<22}" + "".join(f"{c:>10}" for c in ("n", "acc", "prec", "recall", "F1", "ROC-AUC", "PR-AUC", "TPR@1%", "TPR@.1%", "ECE"))
    lines = [title, head, "-" * len(head)] if title else [head, "-" * len(head)]
    for name, m in results.items():
        cells = [f"{m['n']:>10d}"] + [f"{m[c]:>10.4f}" for c in cols[1:]]
        lines.append(f"{name:<22}" + "".join(cells))
    return "\n".join(lines)


def finish_run(out_dir: Path, model, tokenized, cfg, amp_dtype, started: float, log=print, load=None) -> dict:
    """Load the best checkpoint's weights (``load(model, folder)``, default
    :func:`load_weights`), evaluate every set, write ``metrics.json`` into the
    best checkpoint and ``results.json`` into the run."""
    best = out_dir / "best"
    (load or load_weights)(model, best)
    evaluation = final_evaluation(model, tokenized, cfg.train.eval_batch_size, scoring_precision_name(amp_dtype), out_dir)
    evaluation["train_seconds"] = time.time() - started
    evaluation["best_checkpoint"] = str(best.resolve().name)
    write_json(best / "metrics.json", evaluation)
    write_json(out_dir / "results.json", evaluation)
    log(format_table(evaluation["sets"], f"results (threshold {evaluation['threshold']:.3f} chosen on validation)"))
    return evaluation


def load_weights(model, folder: Path) -> None:
    """Load a checkpoint folder's ``model.safetensors`` into ``model`` in place."""
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"), device=str(next(model.parameters()).device))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "position_ids" not in k]:
        raise RuntimeError(f"checkpoint {folder} does not match the model: missing {missing}, unexpected {unexpected}")


def set_seed(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
