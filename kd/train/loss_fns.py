"""The loss functions the loop calls, ``loss_fn(model, batch) -> summed loss``:
cross-entropy on labels, encoder distillation, and the generative (QLoRA) student's
class- and token-level objectives. Each sums over the batch's examples; the loop
normalises by the examples of the whole optimizer step."""
from __future__ import annotations

from contextlib import nullcontext

import torch

from kd.train.on_policy import per_example_token_sum, sample_continuations
from kd.train.teacher_cache import RowTable
from losses import DistillationObjective, ModelOutputs, capture_qkv
from models.verbalizer import VerbalizerClassifier, answer_batch, answer_token_logits, sequence_logits


def cross_entropy_sum(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Hard-label cross-entropy summed over the batch (the loop normalises)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return torch.nn.functional.cross_entropy(logits.float(), batch["labels"], ignore_index=-100, reduction="sum")


def distillation_loss(objective, *, teacher=None, teacher_logits: torch.Tensor | None = None, teacher_input_ids=None):
    """``loss_fn(model, batch)`` for the loop: the objective's weighted sum over the batch.

    Teacher outputs come from ``teacher_logits[batch["index"]]`` (the cache)
    when the objective needs logits only, else from a forward pass of the
    frozen ``teacher`` (eval mode, no gradients, under the loop's autocast).
    ``teacher_input_ids`` maps student token ids to the teacher's (a
    vocabulary-pruned student keeps the teacher's segmentation, renumbered).
    """
    needs_features = objective.needs_hidden_states or objective.needs_attention_relations
    if objective.needs_teacher and teacher is None and (teacher_logits is None or needs_features):
        raise ValueError(f"objective {objective.spec!r} needs a live teacher (hidden states or attention) or cached logits")
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    cached = RowTable(teacher_logits) if teacher_logits is not None else None
    to_teacher_ids = RowTable(teacher_input_ids) if teacher_input_ids is not None else None

    def run(model, batch, want_hidden: bool) -> ModelOutputs:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=want_hidden)
        return ModelOutputs(out.logits, out.hidden_states if want_hidden else None, batch["attention_mask"])

    def loss_fn(model, batch) -> torch.Tensor:
        with capture_qkv(model, objective.student_qkv_layers) if objective.needs_attention_relations else nullcontext() as s_qkv:
            student = run(model, batch, objective.needs_hidden_states)
        student.qkv = s_qkv
        teacher_out = None
        if objective.needs_teacher:
            if cached is not None and not needs_features:
                teacher_out = ModelOutputs(cached.rows(batch["index"]))
            else:
                teacher_batch = batch
                if to_teacher_ids is not None:
                    teacher_batch = {**batch, "input_ids": to_teacher_ids.rows(batch["input_ids"])}
                with torch.no_grad(), (capture_qkv(teacher, objective.teacher_qkv_layers) if objective.needs_attention_relations else nullcontext()) as t_qkv:
                    teacher_out = run(teacher, teacher_batch, objective.needs_hidden_states)
                teacher_out.qkv = t_qkv
        total, _ = objective(student, teacher_out, labels=batch["labels"])
        return total

    return loss_fn


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
    """``loss_fn(model, batch)`` for ``kd.train.loop.train``, ``model`` a
    :class:`VerbalizerClassifier` and ``batch`` from ``kd.data.batching.collate`` on
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
