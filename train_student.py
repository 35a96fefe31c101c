"""Distill a trained teacher into a smaller student with any objective from losses/.

    python train_student.py --teacher runs/teacher-minilm/best                 # 3-layer student, ce + forward KL
    python train_student.py --teacher T --set distill.objective="ce:0.5,rkl:0.5@T=2"
    python train_student.py --teacher T --set distill.objective="fkl@T=2,hidden_mse@map=uniform"
    python train_student.py --teacher T --set distill.augment_copies=0      # no augmented transfer set
    python train_student.py --teacher T --set student.prune_vocab=false     # keep the whole vocabulary
    python train_student.py --teacher T --set student.init=narrow --set student.hidden_size=192

The default preset (configs/student-minilm.yaml) prunes the vocabulary to the
URL tokens and adds two teacher-labelled perturbed copies of each training
URL (``distill.augment_copies``); a label-only objective (``ce``) needs
``distill.augment_copies=0``.

The student uses the teacher's data split (from the teacher's run_info.json;
``--set data.KEY=VALUE`` overrides single fields) so that no test URL was
seen by the teacher. Teacher logits are computed once and cached on disk,
keyed by URL. Writes the same run folder as train_teacher.py, plus
``results.json`` with the student-vs-teacher comparison.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kd.batching import tokenize
from kd.checkpoint import write_json
from kd.classifier import (
    finish_run,
    load_tokenizer,
    make_saver,
    make_validator,
    run_info,
    set_seed,
    start_run,
)
from kd.config import ModelConfig, _build
from kd.data import DataConfig, Examples, build_splits, load_examples
from kd.distill import cached_teacher_logits, distillation_loss, model_fingerprint, teacher_scorer
from kd.distributed import barrier, default_device, init_distributed
from kd.errors import run_cli, usage_errors
from kd.loop import TrainConfig, autocast_dtype, train
from kd.paths import cache_root
from kd.runinfo import claim_run_folder, resolved_config
from kd.sources import SourceSpec
from losses import build_objective, parse_spec
from models.paths import NO_REMOTE_CODE, ModelFolderError, resolve_model_path

STUDENT_INITS = ("from_teacher", "narrow", "pretrained", "fresh")


@dataclass
class StudentConfig:
    """How the student is built (YAML section ``student``)."""

    init: str = "from_teacher"
    """``from_teacher`` (teacher layers, DistilBERT recipe), ``narrow`` (smaller width, random),
    ``pretrained`` / ``fresh`` (any encoder ``name_or_path``, e.g. distilbert-base-uncased)."""
    num_layers: int = 3
    layer_selection: str = "every_other"
    name_or_path: str | None = None
    hidden_size: int | None = None
    """Width of a ``narrow`` student (hidden-state terms then learn projections)."""
    num_attention_heads: int | None = None
    prune_vocab: bool = False
    """Keep only the embedding rows of tokens that occur in the training (and transfer) URLs."""

    def __post_init__(self):
        if self.init not in STUDENT_INITS:
            raise ValueError(f"student.init must be one of {STUDENT_INITS}, not {self.init!r}")
        if self.init in ("pretrained", "fresh") and not self.name_or_path:
            raise ValueError(f"student.init={self.init} needs student.name_or_path (e.g. distilbert-base-uncased)")
        if self.init == "narrow" and not self.hidden_size:
            raise ValueError("student.init=narrow needs student.hidden_size")


@dataclass
class DistillConfig:
    """The objective and where teacher outputs come from (YAML section ``distill``)."""

    objective: str = "ce:0.5,fkl:0.5@T=2"
    """Weighted terms, grammar in losses/README.md."""
    cache_teacher_logits: bool = True
    """Run the teacher once and reuse its logits (objectives on logits only)."""
    cache_dir: str | None = None
    """Teacher-logit cache folder (default: $KD_CACHE_DIR or ~/.cache/phish-kd, then teacher-logits/)."""
    transfer_sources: list = field(default_factory=list)
    """Extra unlabelled URL sources: the student learns the teacher's soft labels on them."""
    max_transfer_examples: int | None = None
    augment_copies: int = 0
    """Add this many perturbed copies of each training URL (``kd.augment``: host of one
    URL with the path of another, or one path segment dropped) to the transfer set."""

    def __post_init__(self):
        if self.augment_copies < 0:
            raise ValueError(f"distill.augment_copies must be >= 0, got {self.augment_copies}")


@dataclass
class StudentRunConfig:
    teacher: str = "runs/teacher-minilm/best"
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    """Only ``max_length`` and ``dropout`` apply to a student."""
    data: dict = field(default_factory=dict)
    """Overrides on top of the teacher's data section (normally empty: the same split)."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4))
    out_dir: str = "runs/student"


def load_teacher(path: str, device):
    """The frozen teacher of checkpoint folder ``path``, once the folder (no custom
    code) and its tokenizer have passed :func:`kd.classifier.load_tokenizer`'s checks."""
    from transformers import AutoModelForSequenceClassification

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ModelFolderError(f"no teacher checkpoint at {folder} (train one with train_teacher.py)")
    load_tokenizer(str(folder))
    teacher = AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="sdpa", **NO_REMOTE_CODE)
    return teacher.eval().requires_grad_(False)


def teacher_data_config(cfg: StudentRunConfig) -> DataConfig:
    info_file = Path(cfg.teacher) / "run_info.json"
    base = json.loads(info_file.read_text())["config"]["data"] if info_file.is_file() else {}
    return _build(DataConfig, {**base, **cfg.data}, "data")


def build_student(cfg: StudentConfig, teacher):
    from models.student import narrow_student, student_from_config, student_from_teacher

    if cfg.init == "from_teacher":
        return student_from_teacher(teacher, cfg.num_layers, cfg.layer_selection)
    if cfg.init == "narrow":
        return narrow_student(teacher.config, cfg.num_layers, cfg.hidden_size, cfg.num_attention_heads)
    return student_from_config(cfg.name_or_path, pretrained=cfg.init == "pretrained")


def student_tokenizer(cfg: StudentConfig, teacher_tokenizer):
    """The tokenizer the student reads: ``teacher_tokenizer`` itself, unless a
    ``pretrained`` / ``fresh`` student's own tokenizer maps any string to
    another id (then that one, and the caller must not feed its ids to the teacher)."""
    if cfg.init not in ("pretrained", "fresh"):
        return teacher_tokenizer
    own = load_tokenizer(cfg.name_or_path)
    return teacher_tokenizer if own.get_vocab() == teacher_tokenizer.get_vocab() else own


def transfer_examples(cfg: StudentRunConfig, data_cfg: DataConfig, splits, log) -> Examples:
    """Unlabelled transfer URLs (the sources' first, capped at
    ``max_transfer_examples``, then the augmented copies of training URLs),
    minus every URL of the run's splits (no test leakage)."""
    if not (cfg.distill.transfer_sources or cfg.distill.augment_copies):
        return Examples([], [])
    taken = {u for ex in splits.all_sets().values() for u in ex.urls}
    urls = []
    if cfg.distill.transfer_sources:
        specs = [SourceSpec.from_dict(s) for s in cfg.distill.transfer_sources]
        extra = load_examples(specs, data_cfg, splits.report, "transfer")
        urls = [u for u in extra.urls if u not in taken][: cfg.distill.max_transfer_examples]
        log(f"transfer set: {len(urls)} unlabelled URLs ({len(extra) - len(urls)} dropped: in the splits or over the cap)")
    if cfg.distill.augment_copies:
        from kd.augment import augment_urls

        copies = augment_urls(splits.train.urls, cfg.distill.augment_copies, seed=cfg.train.seed)
        chosen = set(urls)
        kept = [u for u in copies if u not in taken and u not in chosen]
        log(f"transfer set: {len(kept)} augmented copies of training URLs ({len(copies) - len(kept)} dropped: in the splits)")
        urls += kept
    return Examples(urls, [-100] * len(urls))


def cache_file(cfg: StudentRunConfig, autocast_dtype: torch.dtype | None) -> Path:
    """The teacher-logit cache of this teacher, ``max_length`` and teacher precision
    (logits computed under bf16 autocast and in fp32 differ, so they never share a file)."""
    root = Path(cfg.distill.cache_dir) if cfg.distill.cache_dir else cache_root()
    precision = str(autocast_dtype).removeprefix("torch.") if autocast_dtype is not None else "float32"
    return root / "teacher-logits" / f"{model_fingerprint(Path(cfg.teacher), cfg.model.max_length)}-{precision}.safetensors"


def run(cfg: StudentRunConfig, resume: bool = False, on_step=None) -> dict:
    started = time.time()
    dist_info = init_distributed()
    device = default_device(dist_info)
    set_seed(cfg.train.seed)
    log = print if dist_info.is_main else (lambda *a, **k: None)
    out_dir = Path(cfg.out_dir)
    amp = autocast_dtype(cfg.train.precision, device)

    teacher = load_teacher(cfg.teacher, device)
    teacher_tokenizer = load_tokenizer(cfg.teacher)
    data_cfg = teacher_data_config(cfg)
    # Record the resolved spec, not only the overrides, so that the student's run_info.json
    # rebuilds its split without the teacher (kd.evaluate, quantize.py).
    cfg.data = dataclasses.asdict(data_cfg)
    splits = build_splits(data_cfg)
    transfer = transfer_examples(cfg, data_cfg, splits, log)
    log(splits.report.summary())
    train_examples = Examples(splits.train.urls + transfer.urls, splits.train.labels + transfer.labels)

    student = build_student(cfg.student, teacher)
    if cfg.model.dropout is not None:
        for module in student.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = cfg.model.dropout
    tokenizer, teacher_ids, pruning = student_tokenizer(cfg.student, teacher_tokenizer), None, None
    own_vocabulary = tokenizer is not teacher_tokenizer
    if cfg.student.prune_vocab:
        from models.student import prune_vocabulary, pruning_report, token_ids_in

        if own_vocabulary:
            raise ValueError(f"student.prune_vocab needs a student with the teacher's vocabulary; "
                             f"{cfg.student.name_or_path} has a tokenizer of its own")
        keep = token_ids_in(train_examples.urls, teacher_tokenizer, cfg.model.max_length)
        before = student
        student, tokenizer = prune_vocabulary(student, teacher_tokenizer, keep)
        pruning = pruning_report(before, student)
        teacher_ids = torch.tensor(keep, dtype=torch.long)  # student id -> teacher id
        log(f"vocabulary pruned: {pruning}")
    student = student.to(device)
    tokenized = {name: tokenize(ex, tokenizer, cfg.model.max_length) for name, ex in splits.all_sets().items()}
    student_train = tokenize(train_examples, tokenizer, cfg.model.max_length)

    objective = build_objective(
        cfg.distill.objective,
        student_hidden_size=student.config.hidden_size,
        teacher_hidden_size=teacher.config.hidden_size,
        student_num_layers=student.config.num_hidden_layers,
        teacher_num_layers=teacher.config.num_hidden_layers,
    ).to(device)
    needs_features = objective.needs_hidden_states or objective.needs_attention_relations
    if own_vocabulary and needs_features:
        raise ValueError(f"objective {objective.spec!r} runs the teacher live on the student's token ids, but "
                         f"student {cfg.student.name_or_path} has another vocabulary than the teacher; use logit terms "
                         "only (ce, fkl, rkl, ...: the teacher's logits are cached by URL) or a student with the teacher's tokenizer")
    if transfer.urls and not objective.needs_teacher:
        raise ValueError(f"a transfer set has no labels: objective {objective.spec!r} needs a teacher term "
                         "(or drop the transfer set: distill.augment_copies=0, distill.transfer_sources=[])")
    logits = None
    # A student with its own vocabulary cannot feed its ids to a live teacher: it reads cached logits.
    if objective.needs_teacher and (cfg.distill.cache_teacher_logits or own_vocabulary) and not needs_features:
        score = teacher_scorer(teacher, teacher_tokenizer, train_examples.urls, max_length=cfg.model.max_length,
                               batch_size=cfg.train.eval_batch_size, autocast_dtype=amp)
        logits = cached_teacher_logits(train_examples.urls, cache_file(cfg, amp), score, log=log)
    loss_fn = distillation_loss(objective, teacher=teacher if logits is None else None,
                                teacher_logits=logits, teacher_input_ids=teacher_ids)
    if dist_info.is_main and not resume:
        start_run(cfg, out_dir, splits)
    barrier(dist_info)
    log(f"student: {sum(p.numel() for p in student.parameters()) / 1e6:.2f}M parameters "
        f"(teacher {sum(p.numel() for p in teacher.parameters()) / 1e6:.2f}M), objective {objective.spec}")
    info = run_info(cfg, splits, {"role": "student", "objective": objective.spec, "teacher": str(Path(cfg.teacher).resolve()), "vocabulary_pruning": pruning})
    extra = {"objective": objective} if any(True for _ in objective.parameters()) else {}
    train(
        student, loss_fn, student_train, make_validator(tokenized["validation"], cfg.train.eval_batch_size, amp),
        cfg.train, out_dir, save=make_saver(tokenizer, info), device=device, dist_info=dist_info,
        resume=resume, extra_modules=extra, on_step=on_step,
    )
    if not dist_info.is_main:
        return {}
    results = finish_run(out_dir, student, tokenized, cfg, amp, started, log)
    results["comparison"] = compare_with_teacher(out_dir / "best", Path(cfg.teacher), results)
    write_json(out_dir / "results.json", results)
    c = results["comparison"]
    log(f"student vs teacher: {c['student_parameters'] / 1e6:.2f}M vs {c['teacher_parameters'] / 1e6:.2f}M parameters, "
        f"{c['student_size_mb']:.1f} vs {c['teacher_size_mb']:.1f} MB on disk ({c['percent_smaller']:.1f} % smaller), "
        f"test F1 {c['student_test_f1']:.4f} vs {c['teacher_test_f1']:.4f} ({c['f1_retained_percent']:.1f} % kept)")
    return results


def _weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors") if p.name != "objective.safetensors")


def _parameters(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in Path(folder).glob("model*.safetensors"):
        with safe_open(str(file), "pt") as handle:
            for key in handle.keys():
                total += int(np.prod(handle.get_slice(key).get_shape()))
    return total


def compare_with_teacher(student_dir: Path, teacher_dir: Path, results: dict) -> dict:
    """Parameters, size on disk and test F1 of student vs teacher (the teacher's
    own metrics.json, computed on the same split)."""
    teacher_metrics = json.loads((teacher_dir / "metrics.json").read_text()) if (teacher_dir / "metrics.json").is_file() else {}
    teacher_f1 = teacher_metrics.get("sets", {}).get("test", {}).get("f1", float("nan"))
    student_f1 = results["sets"].get("test", {}).get("f1", float("nan"))
    s_bytes, t_bytes = _weights_bytes(student_dir), _weights_bytes(teacher_dir)
    return {
        "student_parameters": _parameters(student_dir),
        "teacher_parameters": _parameters(teacher_dir),
        "student_size_mb": s_bytes / 1e6,
        "teacher_size_mb": t_bytes / 1e6,
        "percent_smaller": 100 * (1 - s_bytes / t_bytes),
        "student_test_f1": student_f1,
        "teacher_test_f1": teacher_f1,
        "f1_retained_percent": 100 * student_f1 / teacher_f1,
    }


def main(argv=None) -> dict:
    from train_teacher import add_common_arguments, config_from_args

    argv = sys.argv[1:] if argv is None else list(argv)
    if "--generative" in argv:  # before parsing: the QLoRA recipe has options of its own
        from kd import qlora

        return qlora.main([a for a in argv if a != "--generative"])
    # No abbreviations: "--gen" must not pass as --generative's prefix unnoticed.
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    add_common_arguments(parser, "student-minilm")
    parser.add_argument("--teacher", help="teacher checkpoint folder (default: the config's teacher)")
    parser.add_argument("--generative", action="store_true",
                        help="train the QLoRA generative student instead (kd.qlora, default preset qlora-smollm2); "
                             "all other options then go to python -m kd.qlora")
    args = parser.parse_args(argv)
    if args.teacher:
        args.set.append(f"teacher={args.teacher}")
    with usage_errors():
        cfg = config_from_args(args, StudentRunConfig)
        parse_spec(cfg.distill.objective)  # a bad objective fails now, not after the data and the teacher load
        current, data_cfg = recorded_config(cfg)
    resolve_model_path(cfg.teacher)  # no such folder, custom code: before the run folder is claimed
    with claim_run_folder(Path(cfg.out_dir), resume=args.resume, allowed=args.allow_changed,
                          current=current, data_cfg=data_cfg):
        return run(cfg, resume=args.resume)


def recorded_config(cfg: StudentRunConfig) -> tuple[dict, DataConfig]:
    """``cfg`` as :func:`run` records it in ``config.yaml`` (the teacher's data spec
    resolved), and that data spec: what ``--resume`` compares."""
    data_cfg = teacher_data_config(cfg)
    return {**resolved_config(cfg), "data": dataclasses.asdict(data_cfg)}, data_cfg


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="train_student.py"))
