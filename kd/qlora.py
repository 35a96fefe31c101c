"""The QLoRA recipe: distil into a 4-bit generative student (NF4 base + LoRA) that
classifies a URL by the verbalizer word it would write after a prompt.

    python train_student.py --generative                                  # preset qlora-smollm2
    python train_student.py --generative --teacher runs/teacher-minilm/best --set distill.objective="ce:0.5,rkl:0.5@T=2"
    python train_student.py --generative --set distill.token_objective="rkl" \\
        --set distill.generative_teacher=PATH --set distill.on_policy=true   # MiniLLM-style, on-policy
    python -m models.merge_adapters runs/qlora-smollm2/best runs/qlora-smollm2/merged

The loss of one example (``models.generative`` has the prompt and verbalizer):

    class level   objective(q, p_enc, y)    q = softmax of the verbalizer logits (C = 2) at the
                                            answer position, p_enc the encoder teacher's class
                                            distribution (its logits cached by URL), y the label;
    token level   token_objective(q_V, p_V) full-vocabulary distributions of the student and of a
                                            generative teacher with the same tokenizer: at the
                                            answer position, or (``on_policy``) the mean over the
                                            tokens of a continuation the student samples itself.

Items are examples in both cases, so the shared loop (``kd.loop.train``)
normalises by the examples of the whole optimizer step, whatever the number
of sampled tokens. The student is wrapped as a C-way sequence classifier
(:class:`VerbalizerClassifier`), so validation, the threshold chosen on
validation and the final metrics are those of the encoder recipes
(``kd.classifier``). Checkpoints hold the adapters only. Runs in one process.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kd.batching import TokenizedSet, collate
from kd.checkpoint import write_json
from kd.classifier import finish_run, load_tokenizer, make_validator, run_info, set_seed, start_run
from kd.config import ModelConfig, _build
from kd.data import DataConfig, DataSplits, _sample, build_splits
from kd.distill import RowTable, cached_teacher_logits, teacher_scorer
from kd.distributed import DistInfo, default_device
from kd.errors import run_cli, usage_errors
from kd.loop import TrainConfig, autocast_dtype, train
from kd.runinfo import claim_run_folder
from losses import TERMS, DistillationObjective, ModelOutputs, build_objective
from models.generative import (
    DEFAULT_TEMPLATE,
    DEFAULT_WORDS,
    LORA_TARGETS,
    SMOLLM_ALIAS,
    PromptFormat,
    VerbalizerClassifier,
    answer_batch,
    answer_token_logits,
    check_same_vocabulary,
    load_causal_lm,
    load_qlora_student,
    sample_continuations,
    save_adapters,
    sequence_logits,
    tokenize_prompts,
    trainable_parameters,
)
from train_student import cache_file, load_teacher, teacher_data_config

QUANTIZE = ("nf4", "none")


@dataclass
class GenerativeStudentConfig:
    """The causal LM, its adapters and its prompt (YAML section ``student``)."""

    name_or_path: str = SMOLLM_ALIAS
    """``packaged:smollm2`` (SmolLM2-135M-Instruct from the PyPI GGUF, offline), a ``.gguf`` file, a folder or hub name."""
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
    """A causal LM with the student's tokenizer (folder, hub name, ``.gguf`` or ``packaged:smollm2``)."""
    generative_teacher_quantize: str = "none"
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
    data: dict = field(default_factory=dict)
    """Overrides on top of the teacher's data section (normally empty: the same split)."""
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


# --------------------------------------------------------------------------- checkpoints


def load_best_adapters(model: VerbalizerClassifier, folder: Path) -> None:
    """Put the adapters saved in ``folder`` (``save_adapters``) into ``model`` in place."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    device = next(model.parameters()).device
    set_peft_model_state_dict(model.lm, load_file(str(Path(folder) / "adapter_model.safetensors"), device=str(device)))


# --------------------------------------------------------------------------- objectives and loss


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
    """A frozen causal-LM teacher; ``ValueError`` unless its tokenizer is the student's."""
    teacher, tokenizer = load_causal_lm(name_or_path, quantize, device)
    check_same_vocabulary(student_tokenizer, tokenizer)
    return teacher.requires_grad_(False)


def per_example_token_sum(
    objective: DistillationObjective, student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Σ_b mean_{t : mask[b, t]} value_b,t of a token-level objective, for
    ``(B, S, V)`` logits and a ``(B, S)`` bool mask (a row with no position adds 0)."""
    values = objective.per_position(ModelOutputs(student_logits), ModelOutputs(teacher_logits), mask)  # (B, S)
    return (values.sum(-1) / mask.sum(-1).clamp(min=1)).sum()


def qlora_loss(
    objective: DistillationObjective,
    *,
    teacher_logits: torch.Tensor | None = None,
    token_objective: DistillationObjective | None = None,
    generative_teacher: torch.nn.Module | None = None,
    tokenizer=None,
    on_policy: bool = False,
    max_new_tokens: int = 8,
    temperature: float = 1.0,
):
    """``loss_fn(model, batch)`` for ``kd.loop.train``, ``model`` a
    :class:`VerbalizerClassifier` and ``batch`` from ``kd.batching.collate`` on
    tokenised prompts: the sum over the batch's examples of the class-level
    objective (``(B, C)`` verbalizer logits vs ``teacher_logits[batch["index"]]``
    ``(N, C)`` and the labels) plus the token-level one (``(B, V)`` logits at the
    answer position, or on-policy each example's mean over its sampled tokens).
    """
    if objective.needs_teacher and teacher_logits is None:
        raise ValueError(f"objective {objective.spec!r} needs the encoder teacher's logits")
    if (token_objective is None) != (generative_teacher is None) or (on_policy and token_objective is None):
        raise ValueError("a token-level objective, a generative teacher and on-policy sampling go together")
    cached = RowTable(teacher_logits) if teacher_logits is not None else None

    def loss_fn(model: VerbalizerClassifier, batch: dict) -> torch.Tensor:
        prompt = answer_batch(batch["input_ids"], batch["attention_mask"])
        if on_policy:
            sampled = sample_continuations(model.lm, tokenizer, prompt, max_new_tokens, temperature)
            # Every left-padded prompt ends at column S - 1: the answer position, and the
            # first of the T positions that predict sampled tokens. Only these T columns
            # get logits (B, T, V), not all S + T.
            scored = slice(prompt["input_ids"].shape[1] - 1, -1)
            logits = sequence_logits(model.lm, sampled["input_ids"], sampled["attention_mask"], scored)
            answer = logits[:, 0]
        else:
            answer = answer_token_logits(model.lm, prompt)  # (B, V)
        teacher = None
        if objective.needs_teacher:
            teacher = ModelOutputs(cached.rows(batch["index"]))
        total, _ = objective(ModelOutputs(answer[:, model.token_ids]), teacher, labels=batch["labels"])
        if token_objective is None:
            return total
        with torch.no_grad():
            if on_policy:
                reference = sequence_logits(generative_teacher, sampled["input_ids"], sampled["attention_mask"], scored)
            else:
                reference = answer_token_logits(generative_teacher, prompt)
        if on_policy:
            return total + per_example_token_sum(token_objective, logits, reference, sampled["loss_mask"][:, scored])
        return total + token_objective(ModelOutputs(answer), ModelOutputs(reference))[0]

    return loss_fn


# --------------------------------------------------------------------------- the run


def run_data_config(cfg: QLoRARunConfig) -> DataConfig:
    """The teacher's data spec (``train_student.teacher_data_config``), or ``data`` without a teacher."""
    return teacher_data_config(cfg) if cfg.teacher else _build(DataConfig, dict(cfg.data), "data")


def run_splits(cfg: QLoRARunConfig) -> DataSplits:
    """The split of :func:`run_data_config`, sampled down to ``max_train_examples`` /
    ``max_eval_examples`` (stratified, seeded)."""
    data_cfg = run_data_config(cfg)
    splits = build_splits(data_cfg)
    seed, evals = data_cfg.seed, cfg.max_eval_examples
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
        save_adapters(model.lm, tokenizer, folder, prompt)
        write_json(folder / "run_info.json", info)

    return save


def run(cfg: QLoRARunConfig, resume: bool = False, on_step=None) -> dict:
    """Train, keep the best adapters by validation, evaluate every set at the
    threshold chosen on validation; returns (and writes) ``results.json``."""
    started = time.time()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SystemExit("the QLoRA recipe runs in one process; launch it without torchrun")
    objective, token_objective = build_objectives(cfg.distill, bool(cfg.teacher))
    device = default_device(DistInfo())
    set_seed(cfg.train.seed)
    out_dir = Path(cfg.out_dir)
    amp = autocast_dtype(cfg.train.precision, device)
    splits = run_splits(cfg)
    print(splits.report.summary())

    s = cfg.student
    lm, tokenizer = load_qlora_student(
        s.name_or_path, lora_r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
        target_modules=s.target_modules, quantize=s.quantize, device=device, gradient_checkpointing=s.gradient_checkpointing,
    )
    prompt = s.prompt()
    student = VerbalizerClassifier(lm, prompt.token_ids(tokenizer))
    tokenized = {name: tokenize_prompts(ex, tokenizer, prompt) for name, ex in splits.all_sets().items()}

    teacher_logits = None
    if objective.needs_teacher:

        def score(missing):  # loads the teacher only when the cache lacks some URLs
            return teacher_scorer(load_teacher(cfg.teacher, device), load_tokenizer(cfg.teacher), splits.train.urls,
                                  max_length=cfg.model.max_length, batch_size=cfg.train.eval_batch_size,
                                  autocast_dtype=amp)(missing)

        teacher_logits = cached_teacher_logits(splits.train.urls, cache_file(cfg, amp), score)
    generative_teacher = None
    if token_objective is not None:
        generative_teacher = load_generative_teacher(cfg.distill.generative_teacher, tokenizer,
                                                     cfg.distill.generative_teacher_quantize, device)
    loss_fn = qlora_loss(
        objective, teacher_logits=teacher_logits, token_objective=token_objective, generative_teacher=generative_teacher,
        tokenizer=tokenizer, on_policy=cfg.distill.on_policy, max_new_tokens=cfg.distill.max_new_tokens,
        temperature=cfg.distill.sample_temperature,
    )

    trainable, total = trainable_parameters(lm)
    print(f"student: {s.name_or_path} ({s.quantize}), {trainable / 1e6:.2f}M of {total / 1e6:.1f}M parameters train; "
          f"objective {objective.spec}" + (f", token level {token_objective.spec}" if token_objective else ""))
    if not resume:
        start_run(cfg, out_dir, splits)
    info = run_info(cfg, splits, {
        "role": "qlora-student",
        "objective": objective.spec,
        "token_objective": token_objective.spec if token_objective else None,
        "teacher": str(Path(cfg.teacher).resolve()) if cfg.teacher else None,
        "trainable_parameters": trainable,
        "total_parameters": total,
    })

    # Throughput of the optimizer steps alone: examples collated for training
    # over the time spent in train() outside validation.
    counts = {"examples": 0, "eval_seconds": 0.0}
    validate = make_validator(tokenized["validation"], cfg.train.eval_batch_size, amp)

    def counted_collate(data: TokenizedSet, indices) -> dict:
        counts["examples"] += len(indices)
        return collate(data, indices)

    def timed_validate(model) -> dict:
        begin = time.perf_counter()
        metrics = validate(model)
        counts["eval_seconds"] += time.perf_counter() - begin
        return metrics

    begin = time.perf_counter()
    train(student, loss_fn, tokenized["train"], timed_validate, cfg.train, out_dir,
          save=make_adapter_saver(tokenizer, prompt, info), device=device, resume=resume,
          collate_fn=counted_collate, on_step=on_step)
    train_seconds = time.perf_counter() - begin - counts["eval_seconds"]

    results = finish_run(out_dir, student, tokenized, cfg, amp, started, load=load_best_adapters)
    results.update({
        "trainable_parameters": trainable,
        "total_parameters": total,
        "train_examples_seen": counts["examples"],
        "train_samples_per_s": counts["examples"] / train_seconds if counts["examples"] else None,
        "objective": objective.spec,
        "token_objective": token_objective.spec if token_objective else None,
    })
    write_json(out_dir / "results.json", results)
    print(f"trainable {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f} %), "
          f"{results['train_samples_per_s'] or 0:.2f} samples/s; adapters in {(out_dir / 'best').resolve()}")
    return results


def main(argv=None) -> dict:
    from train_teacher import add_common_arguments, config_from_args

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, "qlora-smollm2")
    parser.add_argument("--teacher", help="encoder teacher checkpoint folder (default: the config's teacher)")
    args = parser.parse_args(argv)
    if args.teacher:
        args.set.append(f"teacher={args.teacher}")
    with usage_errors():
        cfg = config_from_args(args, QLoRARunConfig)
        build_objectives(cfg.distill, bool(cfg.teacher))  # a bad objective fails before anything loads
        data_cfg = run_data_config(cfg)
    with claim_run_folder(Path(cfg.out_dir), resume=args.resume, allowed=args.allow_changed,
                          current=dataclasses.asdict(cfg), data_cfg=data_cfg):
        return run(cfg, resume=args.resume)


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="python -m kd.qlora"))
