"""The generative (QLoRA) student: its config sections, its objectives and teachers,
its data and its adapter checkpoints.

The loss of one example:

    class level   objective(q, p_enc, y)    q = softmax of the verbalizer logits (C = 2) at the
                                            answer position, p_enc the encoder teacher's class
                                            distribution (its logits cached by URL), y the label;
    token level   token_objective(q_V, p_V) full-vocabulary distributions of the student and of a
                                            generative teacher with the same tokenizer: at the
                                            answer position, or (``on_policy``) the mean over the
                                            tokens of a continuation the student samples itself.

Items are examples in both cases, so the shared loop normalises by the
examples of the whole optimizer step, whatever the number of sampled tokens.
The student is wrapped as a C-way sequence classifier
(:class:`models.verbalizer.VerbalizerClassifier`), so validation, the
threshold chosen on validation and the final metrics are those of the encoder
recipes. Checkpoints hold the adapters only.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from kd.data.prompts import DEFAULT_TEMPLATE, PromptFormat
from kd.data.splits import DataConfig, DataSplits, _sample, build_splits
from kd.eval.report import write_json
from kd.train.config import ModelConfig
from kd.train.loop import TrainConfig
from losses import TERMS, DistillationObjective, build_objective
from models.causal_lm import load_causal_lm
from models.gguf import SMOLLM_ALIAS
from models.lora import LORA_TARGETS, is_adapter_folder, load_adapters, save_adapters
from models.verbalizer import DEFAULT_WORDS, VerbalizerClassifier, check_same_vocabulary

QUANTIZE = ("nf4", "none")


@dataclass
class GenerativeStudentConfig:
    """The causal LM, its adapters and its prompt (YAML section ``student``)."""

    name_or_path: str = SMOLLM_ALIAS
    """``packaged:smollm2`` (SmolLM2-135M-Instruct from the PyPI GGUF, offline), another packaged
    causal LM (``packaged:qwen2.5-coder-0.5b``, ``-1.5b``: ``models.paths.PACKAGED_GGUF``), a ``.gguf``
    file, a folder or hub name."""
    quantize: str = "nf4"
    """``nf4`` (QLoRA: 4-bit base) or ``none`` (LoRA on a full-precision base)."""
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list = field(default_factory=lambda: list(LORA_TARGETS))
    gradient_checkpointing: bool = False
    template: str = DEFAULT_TEMPLATE
    """Contains ``{url}``; ends with the text the answer word follows."""
    words: list = field(default_factory=lambda: list(DEFAULT_WORDS))
    """Verbalizer: ``words[c]`` answers class c (0 legitimate, 1 phishing); one token each."""
    max_url_chars: int = 256

    def __post_init__(self):
        if self.quantize not in QUANTIZE:
            raise ValueError(f"student.quantize must be one of {QUANTIZE}, not {self.quantize!r}")
        if "{url}" not in self.template:
            raise ValueError(f"student.template must contain {{url}}: {self.template!r}")

    def prompt(self) -> PromptFormat:
        return PromptFormat(self.template, tuple(self.words), self.max_url_chars)


@dataclass
class GenerativeDistillConfig:
    """The objectives and the teachers they read (YAML section ``distill``)."""

    objective: str = "ce:0.5,fkl:0.5@T=2"
    """Class-level terms on the verbalizer distribution (grammar in losses/README.md):
    ``ce`` on the label; ``fkl``, ``rkl``, ``jsd``, ... against the encoder teacher."""
    token_objective: str = ""
    """Token-level soft terms (e.g. ``rkl``, MiniLLM) against ``generative_teacher``'s
    full-vocabulary distribution; empty: none."""
    generative_teacher: str | None = None
    """A causal LM with the student's tokenizer: a folder, hub name, ``.gguf``, packaged name
    (``packaged:qwen2.5-coder-1.5b``), or this recipe's adapters (``runs/NAME/best``) or merged folder."""
    generative_teacher_quantize: str = "none"
    """The generative teacher's base: ``none`` (full precision) or ``nf4`` (an adapter teacher as trained)."""
    on_policy: bool = False
    """Take the token-level terms on continuations the student samples (else at the answer position)."""
    max_new_tokens: int = 8
    sample_temperature: float = 1.0
    """Sampling temperature of the on-policy continuations (0: greedy)."""
    cache_dir: str | None = None
    """Encoder-teacher logit cache folder (default: $KD_CACHE_DIR or ~/.cache/phish-kd, then teacher-logits/)."""

    def __post_init__(self):
        if self.generative_teacher_quantize not in QUANTIZE:
            raise ValueError(f"distill.generative_teacher_quantize must be one of {QUANTIZE}")
        if self.max_new_tokens < 1:
            raise ValueError(f"distill.max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class QLoRARunConfig:
    teacher: str | None = "runs/teacher-minilm/best"
    """Encoder teacher checkpoint: its split is the student's, its class distribution the
    soft target of the class-level terms. None: a label-only run on ``data``."""
    student: GenerativeStudentConfig = field(default_factory=GenerativeStudentConfig)
    distill: GenerativeDistillConfig = field(default_factory=GenerativeDistillConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    """Only ``max_length`` applies: the encoder teacher's tokens per URL."""
    data: DataConfig = field(default_factory=DataConfig)
    """The teacher's data section (the same split) with the preset's and ``--set data.*`` keys on top
    (resolved by :func:`kd.train.config.load_config`); without a teacher, this section alone."""
    max_train_examples: int | None = None
    """Train on a stratified sample of this many training URLs (None: all)."""
    max_eval_examples: int | None = None
    """Score a stratified sample of this many URLs of validation and of each test set (None: all)."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1, batch_size=16, lr=2e-4, eval_batch_size=64))
    out_dir: str = "runs/qlora-smollm2"

    def __post_init__(self):
        if self.train.compile:
            # The loss runs the wrapped causal LM (model.lm), never a compiled wrapper's forward.
            raise ValueError("train.compile does not apply to the QLoRA student (its loss calls the inner causal LM, "
                             "so compiling the wrapper would do nothing); leave train.compile=false")


def load_best_adapters(model: VerbalizerClassifier, folder: Path) -> None:
    """Put the adapters saved in ``folder`` (``save_adapters``) into ``model`` in place."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    device = next(model.parameters()).device
    set_peft_model_state_dict(model.lm, load_file(str(Path(folder) / "adapter_model.safetensors"), device=str(device)))


def build_objectives(cfg: GenerativeDistillConfig, has_encoder_teacher: bool) -> tuple[DistillationObjective, DistillationObjective | None]:
    """``(class-level objective, token-level objective or None)`` from the specs;
    ``ValueError`` for terms that do not apply or a teacher that is missing."""
    objective = build_objective(cfg.objective)
    if objective.needs_hidden_states or objective.needs_attention_relations:
        raise ValueError(f"distill.objective {objective.spec!r}: a generative student takes ce and logit terms only")
    if objective.needs_teacher and not has_encoder_teacher:
        raise ValueError(f"distill.objective {objective.spec!r} needs an encoder teacher (set teacher=PATH)")
    if not cfg.token_objective:
        if cfg.generative_teacher or cfg.on_policy:
            raise ValueError("distill.generative_teacher and distill.on_policy need a distill.token_objective (e.g. rkl)")
        return objective, None
    token_objective = build_objective(cfg.token_objective)
    wrong = [t.name for t in token_objective.terms if TERMS[t.name].inputs != "logits"]
    if wrong:
        raise ValueError(f"distill.token_objective takes soft terms on logits only (fkl, rkl, jsd, ...), not {wrong}")
    if not cfg.generative_teacher:
        raise ValueError("distill.token_objective needs distill.generative_teacher (a causal LM with the student's tokenizer)")
    return objective, token_objective


def load_generative_teacher(name_or_path: str, student_tokenizer, quantize: str = "none", device=None) -> torch.nn.Module:
    """A frozen causal-LM teacher, in eval mode; ``ValueError`` unless its tokenizer is the student's.

    ``name_or_path`` is a causal LM (packaged name, ``.gguf``, folder, hub name),
    a merged folder (``kd.merge_adapters``), or an adapter folder of this recipe
    (``runs/NAME/best``): its base, named in ``generative.json``, with the
    adapters applied, ``W + (α/r)·B·A``. ``quantize`` is the base's precision:
    ``"none"`` gives what the merged folder gives, ``"nf4"`` the NF4 base the
    adapters were trained on (their logits exactly, in less memory).
    """
    if is_adapter_folder(name_or_path):
        teacher, tokenizer = load_adapters(name_or_path, device, quantize)
    else:
        teacher, tokenizer = load_causal_lm(name_or_path, quantize, device)
    check_same_vocabulary(student_tokenizer, tokenizer)
    return teacher.eval().requires_grad_(False)


def run_splits(cfg: QLoRARunConfig) -> DataSplits:
    """The split of ``cfg.data``, sampled down to ``max_train_examples`` /
    ``max_eval_examples`` (stratified, seeded)."""
    splits = build_splits(cfg.data)
    seed, evals = cfg.data.seed, cfg.max_eval_examples
    sampled = DataSplits(
        _sample(splits.train, cfg.max_train_examples, seed),
        _sample(splits.validation, evals, seed),
        _sample(splits.test, evals, seed) if len(splits.test) else splits.test,
        {name: _sample(ex, evals, seed) for name, ex in splits.test_sets.items()},
        splits.report,
    )
    sampled.report.split_sizes = {name: {"n": len(ex), **ex.class_counts()} for name, ex in sampled.all_sets().items()}
    return sampled


def make_adapter_saver(tokenizer, prompt: PromptFormat, info: dict):
    """``save(model, folder)``: the adapters, tokenizer and prompt (``save_adapters``) and run_info.json."""

    def save(model: VerbalizerClassifier, folder: Path) -> None:
        save_adapters(model.lm, tokenizer, folder, asdict(prompt))
        write_json(folder / "run_info.json", info)

    return save
