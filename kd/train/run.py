"""What every training run shares: the seed, the run folder's first files, the
checkpoint saver, and the final evaluation of the best checkpoint."""
from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from kd.data.splits import DataSplits, write_split_file
from kd.data.urls import with_url_normalizer
from kd.eval.model_card import describe_folder
from kd.eval.report import format_table, write_json
from kd.eval.scoring import final_evaluation, scoring_precision_name
from kd.train.config import save_config
from kd.train.distributed import DistInfo, default_device, init_distributed
from kd.train.runinfo import device_description, git_commit, library_versions
from models.paths import record_tokenizer


def setup_process(seed: int) -> tuple[DistInfo, torch.device, Callable[..., None]]:
    """Join the process group (under torchrun), pick this rank's device and seed
    every generator; ``log`` prints on rank 0 only."""
    dist_info = init_distributed()
    set_seed(seed)
    log = print if dist_info.is_main else (lambda *a, **k: None)
    return dist_info, default_device(dist_info), log


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
    """``save(model, folder)``: a ``save_pretrained`` folder that any HF tool loads,
    whose tokenizer normalises raw URLs as training did (:func:`with_url_normalizer`)."""
    tokenizer = with_url_normalizer(tokenizer)

    def save(model, folder: Path) -> None:
        record_tokenizer(model, tokenizer)
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


def finish_run(out_dir: Path, model, tokenized, cfg, amp_dtype, started: float, log=print, load=None,
               throughput: dict | None = None, model_card: bool = True, validation_fpr: float | None = None) -> dict:
    """Load the best checkpoint's weights (``load(model, folder)``, default
    :func:`load_weights`), evaluate every set, write ``metrics.json`` and (``model_card``:
    a sequence classifier's folder, not QLoRA adapters) the model card and threshold
    fields (:func:`describe_folder`) into the best checkpoint and ``results.json`` into the run, with the loop's
    ``throughput`` (``TrainResult.throughput``: samples and tokens per second, peak memory). The threshold
    maximises validation F1, or with ``validation_fpr`` gives that validation false-positive rate."""
    best = out_dir / "best"
    (load or load_weights)(model, best)
    evaluation = final_evaluation(model, tokenized, cfg.train.eval_batch_size, scoring_precision_name(amp_dtype), out_dir,
                                  validation_fpr=validation_fpr)
    evaluation["train_seconds"] = time.time() - started
    evaluation.update(throughput or {})
    evaluation["best_checkpoint"] = str(best.resolve().name)
    write_json(best / "metrics.json", evaluation)
    if model_card:
        describe_folder(best)
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
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
