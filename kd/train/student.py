"""The encoder student: its config sections, how it is built, its transfer set,
and how it compares with its teacher."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kd.data.augment import augment_urls
from kd.data.batching import TokenizedSet, tokenize
from kd.data.sources import SourceSpec
from kd.data.splits import DataConfig, DataSplits, Examples, load_examples
from kd.eval.measure import pruning_report, saved_parameter_count, size_on_disk_bytes
from kd.train.config import ModelConfig
from kd.train.loop import TrainConfig
from kd.train.teacher_cache import cached_teacher_logits, teacher_logits_file, teacher_scorer
from losses import DistillationObjective, build_objective
from models.encoder import load_tokenizer
from models.student import check_layer_selection, narrow_student, student_from_config, student_from_teacher
from models.vocabulary import prune_vocabulary, token_ids_in

STUDENT_INITS = ("from_teacher", "narrow", "pretrained", "fresh")


@dataclass
class StudentConfig:
    """How the student is built (YAML section ``student``)."""

    init: str = "from_teacher"
    """``from_teacher`` (teacher layers, DistilBERT recipe), ``narrow`` (smaller width, random),
    ``pretrained`` / ``fresh`` (any encoder ``name_or_path``, e.g. distilbert-base-uncased)."""
    num_layers: int = 3
    layer_selection: str = "evenly_spaced"
    """Which teacher layers a ``from_teacher`` student copies (``models.student.select_layers``)."""
    name_or_path: str | None = None
    hidden_size: int | None = None
    """Width of a ``narrow`` student (hidden-state terms then learn projections)."""
    num_attention_heads: int | None = None
    prune_vocab: bool = False
    """Keep only the embedding rows of tokens that occur in the training (and transfer) URLs."""

    def __post_init__(self):
        check_layer_selection(self.layer_selection)
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
    """Add this many perturbed copies of each training URL (``kd.data.augment``: host of one
    URL with the path of another, or one path segment dropped) to the transfer set."""
    threshold: str = "f1"
    """The student's deployed threshold, chosen on validation: ``f1`` maximises its F1;
    ``teacher-fpr`` gives the teacher's validation false-positive rate (from the teacher's
    metrics.json), so the student replaces the teacher at the same false-alarm rate. Where
    validation comes from other collections, the F1 curve is flat at its top and its
    maximum can sit at a looser operating point than the teacher's."""

    def __post_init__(self):
        if self.augment_copies < 0:
            raise ValueError(f"distill.augment_copies must be >= 0, got {self.augment_copies}")
        if self.threshold not in ("f1", "teacher-fpr"):
            raise ValueError(f"distill.threshold must be 'f1' or 'teacher-fpr', got {self.threshold!r}")


@dataclass
class StudentRunConfig:
    teacher: str = "runs/teacher-minilm/best"
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    """Only ``max_length`` and ``dropout`` apply to a student."""
    data: DataConfig = field(default_factory=DataConfig)
    """The teacher's data section (the same split), with the preset's and ``--set data.*`` keys on top
    (resolved by :func:`kd.train.config.load_config`)."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4))
    out_dir: str = "runs/student"


def build_student(cfg: StudentConfig, teacher):
    """The student of ``cfg`` (a fresh model; ``from_teacher`` and ``narrow`` take the teacher's config)."""
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


def transfer_examples(cfg: StudentRunConfig, splits: DataSplits, log) -> Examples:
    """Unlabelled transfer URLs (the sources' first, capped at
    ``max_transfer_examples``, then the augmented copies of training URLs),
    minus every URL of the run's splits (no test leakage)."""
    if not (cfg.distill.transfer_sources or cfg.distill.augment_copies):
        return Examples([], [])
    taken = {u for ex in splits.all_sets().values() for u in ex.urls}
    urls = []
    if cfg.distill.transfer_sources:
        specs = [SourceSpec.from_dict(s) for s in cfg.distill.transfer_sources]
        extra = load_examples(specs, cfg.data, splits.report, "transfer")
        urls = [u for u in extra.urls if u not in taken][: cfg.distill.max_transfer_examples]
        log(f"transfer set: {len(urls)} unlabelled URLs ({len(extra) - len(urls)} dropped: in the splits or over the cap)")
    if cfg.distill.augment_copies:
        copies = augment_urls(splits.train.urls, cfg.distill.augment_copies, seed=cfg.train.seed)
        chosen = set(urls)
        kept = [u for u in copies if u not in taken and u not in chosen]
        log(f"transfer set: {len(kept)} augmented copies of training URLs ({len(copies) - len(kept)} dropped: in the splits)")
        urls += kept
    return Examples(urls, [-100] * len(urls))


def compare_with_teacher(student_dir: Path, teacher_dir: Path, results: dict) -> dict:
    """Parameters, size on disk and test F1 of student vs teacher (the teacher's
    own metrics.json, computed on the same split). The test set compared is ``test``, else the
    first other set both scored (a ``kd.benchmark`` fold has a named held-out set instead)."""
    teacher_metrics = json.loads((teacher_dir / "metrics.json").read_text()) if (teacher_dir / "metrics.json").is_file() else {}
    teacher_sets = teacher_metrics.get("sets", {})
    shared = [name for name in results["sets"] if name != "validation" and name in teacher_sets]
    test_set = "test" if "test" in shared else (shared[0] if shared else "test")
    teacher_f1 = teacher_sets.get(test_set, {}).get("f1", float("nan"))
    student_f1 = results["sets"].get(test_set, {}).get("f1", float("nan"))
    s_bytes, t_bytes = size_on_disk_bytes(student_dir, weights_only=True), size_on_disk_bytes(teacher_dir, weights_only=True)
    return {
        "student_parameters": saved_parameter_count(student_dir),
        "teacher_parameters": saved_parameter_count(teacher_dir),
        "student_size_mb": s_bytes / 1e6,
        "teacher_size_mb": t_bytes / 1e6,
        "percent_smaller": 100 * (1 - s_bytes / t_bytes),
        "test_set": test_set,
        "student_test_f1": student_f1,
        "teacher_test_f1": teacher_f1,
        "f1_retained_percent": 100 * student_f1 / teacher_f1,
    }


@dataclass
class Student:
    """A built encoder student and what its loss needs to know about its vocabulary."""

    model: torch.nn.Module
    tokenizer: object
    teacher_ids: torch.Tensor | None
    """``(K,)`` student token id -> teacher token id, for a vocabulary-pruned student (else None)."""
    own_vocabulary: bool
    """The student reads another tokenizer than the teacher's (its ids mean nothing to the teacher)."""
    pruning: dict | None
    """:func:`kd.eval.measure.pruning_report` of a pruned student."""


def prepare_student(cfg: StudentRunConfig, teacher, teacher_tokenizer, train_urls: list[str], log) -> Student:
    """The student of ``cfg``, with ``model.dropout`` applied and, with
    ``student.prune_vocab``, its vocabulary pruned to the tokens of ``train_urls``."""
    model = build_student(cfg.student, teacher)
    if cfg.model.dropout is not None:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = cfg.model.dropout
    tokenizer = student_tokenizer(cfg.student, teacher_tokenizer)
    own_vocabulary = tokenizer is not teacher_tokenizer
    if not cfg.student.prune_vocab:
        return Student(model, tokenizer, None, own_vocabulary, None)
    if own_vocabulary:
        raise ValueError(f"student.prune_vocab needs a student with the teacher's vocabulary; "
                         f"{cfg.student.name_or_path} has a tokenizer of its own")
    keep = token_ids_in(train_urls, teacher_tokenizer, cfg.model.max_length)
    pruned, tokenizer = prune_vocabulary(model, teacher_tokenizer, keep)
    pruning = pruning_report(model, pruned)
    log(f"vocabulary pruned: {pruning}")
    return Student(pruned, tokenizer, torch.tensor(keep, dtype=torch.long), False, pruning)


def student_objective(cfg: StudentRunConfig, student: Student, teacher, has_transfer_set: bool) -> DistillationObjective:
    """The objective of ``distill.objective`` for this student and teacher; ``ValueError``
    for a combination that cannot train (feature terms on another vocabulary, a transfer
    set without a teacher term)."""
    objective = build_objective(
        cfg.distill.objective,
        student_hidden_size=student.model.config.hidden_size,
        teacher_hidden_size=teacher.config.hidden_size,
        student_num_layers=student.model.config.num_hidden_layers,
        teacher_num_layers=teacher.config.num_hidden_layers,
    )
    if student.own_vocabulary and needs_live_teacher(objective):
        raise ValueError(f"objective {objective.spec!r} runs the teacher live on the student's token ids, but "
                         f"student {cfg.student.name_or_path} has another vocabulary than the teacher; use logit terms "
                         "only (ce, fkl, rkl, ...: the teacher's logits are cached by URL) or a student with the teacher's tokenizer")
    if has_transfer_set and not objective.needs_teacher:
        raise ValueError(f"a transfer set has no labels: objective {objective.spec!r} needs a teacher term "
                         "(or drop the transfer set: distill.augment_copies=0, distill.transfer_sources=[])")
    return objective


def needs_live_teacher(objective: DistillationObjective) -> bool:
    """Hidden-state and attention terms read the teacher's features, which no logit cache holds."""
    return objective.needs_hidden_states or objective.needs_attention_relations


def cached_logits_for(cfg: StudentRunConfig, objective: DistillationObjective, teacher, teacher_tokenizer,
                      student: Student, train_examples: Examples, student_train: TokenizedSet, amp, log) -> torch.Tensor | None:
    """The teacher's logits ``(N, C)`` for ``train_examples`` from the cache, or None
    when the loss runs the teacher live (no teacher term, or feature terms).

    Missing rows are scored from the student's tokenised set (a pruned student's
    ids mapped back to the teacher's); a student with its own vocabulary has the
    URLs tokenised for the teacher, and always reads the cache: the teacher cannot
    read its ids.
    """
    if not objective.needs_teacher:
        return None
    if needs_live_teacher(objective):
        if cfg.distill.cache_teacher_logits:
            log(f"teacher logits: not cached (distill.cache_teacher_logits=true): objective {objective.spec} has "
                "hidden-state or attention terms, so the live teacher runs on every batch")
        return None
    if not (cfg.distill.cache_teacher_logits or student.own_vocabulary):
        return None
    data, teacher_ids = student_train, student.teacher_ids
    if student.own_vocabulary:
        data, teacher_ids = tokenize(train_examples, teacher_tokenizer, cfg.model.max_length), None
    score = teacher_scorer(teacher, data, teacher_input_ids=teacher_ids, batch_size=cfg.train.eval_batch_size,
                           autocast_dtype=amp)
    cache = teacher_logits_file(Path(cfg.teacher), cfg.model.max_length, amp, cfg.distill.cache_dir)
    return cached_teacher_logits(train_examples.urls, cache, score, log=log)
