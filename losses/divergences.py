"""Divergences between a student's and a teacher's logits, and cross-entropy.

Notation: over the last axis (the ``V`` classes or vocabulary entries) the
teacher distribution is ``p = softmax(z_t / T)`` and the student's
``q = softmax(z_s / T)``. Every function takes logits ``(..., V)`` of any
float dtype (the leading axes are the positions: ``(B,)`` for a classifier,
``(B, T)`` for tokens) and an optional bool ``mask`` ``(...)`` of the
positions that count (``None``: all). It computes in float32 and returns a
float32 scalar:

    loss = Σ_{positions that count} value(position)      reduction="sum"
    loss = that sum / number of positions that count     reduction="mean" (0 if none)

or, with ``reduction="none"``, the values themselves, shaped like the
positions ``(...)`` and 0 at the positions that do not count (for sums that
need their own normalisation, e.g. one mean per sequence).

where ``value`` is summed over ``V`` (never averaged over it) and the
soft-label divergences multiply it by ``T²`` so that gradient magnitudes do
not shrink as ``T`` grows (Hinton et al., 2015). Under gradient accumulation,
take ``reduction="sum"`` and divide by the whole step's
:func:`count_positions`, not by each micro-batch's.

``chunk_size`` (positions per chunk) bounds memory for vocabulary-sized
logits: each chunk runs under activation checkpointing, so only one chunk's
float32 intermediates are alive at a time, in the forward and the backward
pass. Chunked and plain agree to float tolerance.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
Reduction = Literal["mean", "sum", "none"]


# --------------------------------------------------------------------------- helpers


def kl_from_logprobs(log_a: Tensor, log_b: Tensor) -> Tensor:
    """KL(a‖b) = Σ_v a_v (log a_v − log b_v) over the last axis: ``(..., V) → (...)``.

    Terms with ``a_v = 0`` count as 0 (not ``0 · (−inf) = NaN``), in the value
    and in the gradient. ``a_v > 0`` where ``b_v = 0`` gives ``+inf``, as it
    should.
    """
    a = log_a.exp()
    # Zeroing the difference (not the product) keeps the backward pass free of
    # 0 · inf: the gradient reaching a_v is (log a_v − log b_v) · g.
    diff = (log_a - log_b).masked_fill(a == 0, 0.0)
    return (a * diff).sum(-1)


def _check_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _check_same_shape(student_logits: Tensor, teacher_logits: Tensor) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ "
            "(a vocabulary mismatch needs an explicit map, not truncation)"
        )


def log_mixture(log_a: Tensor, log_b: Tensor, weight: float) -> Tensor:
    """log(w · a + (1 − w) · b) from log-probabilities, via logsumexp.

    Never forms ``w · exp(log a)``, which underflows for confident
    distributions. At ``w = 0`` or ``1`` it returns ``log b`` or ``log a``.
    """
    _check_unit_interval("mixture weight", weight)
    if weight == 0.0:
        return log_b
    if weight == 1.0:
        return log_a
    # Where a_v = b_v = 0 the mixture is 0 too; logsumexp's backward at
    # (−inf, −inf) is NaN, so those entries are computed from 0s and reset.
    both_zero = torch.isneginf(log_a) & torch.isneginf(log_b)
    log_a, log_b = log_a.masked_fill(both_zero, 0.0), log_b.masked_fill(both_zero, 0.0)
    log_m = torch.logsumexp(torch.stack([log_a + math.log(weight), log_b + math.log1p(-weight)]), dim=0)
    return log_m.masked_fill(both_zero, float("-inf"))


def position_mask(logits: Tensor, mask: Tensor | None = None, labels: Tensor | None = None) -> Tensor:
    """Bool ``(...)`` = ``logits.shape[:-1]``: the positions that count.

    ``mask`` (``None``: all positions) and, where ``labels`` are given,
    ``labels != -100``.
    """
    positions = logits.shape[:-1]
    for name, t in (("mask", mask), ("labels", labels)):
        if t is not None and t.shape != positions:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(positions)} (logits.shape[:-1])")
    keep = torch.ones(positions, dtype=torch.bool, device=logits.device) if mask is None else mask.bool()
    if labels is not None:
        keep = keep & (labels != IGNORE_INDEX)
    return keep


def count_positions(logits: Tensor, mask: Tensor | None = None, labels: Tensor | None = None) -> Tensor:
    """Number of positions that count (int64 scalar), as :func:`position_mask`."""
    return position_mask(logits, mask, labels).sum()


def _chunk_values(per_position: Callable[..., Tensor], keep: Tensor, *rows: Tensor) -> Tensor:
    """``per_position(*rows)`` ``(N,)`` in float32, 0 where not kept.

    Rows that are not kept are zeroed first (float rows to logits 0, label
    rows to class 0): their value is then finite and their gradient exactly 0,
    so a non-finite row outside the mask cannot put NaN into the backward pass.
    """
    clean = [
        r.float().masked_fill(~keep[:, None], 0.0) if r.is_floating_point() else r.masked_fill(~keep, 0)
        for r in rows
    ]
    return per_position(*clean).masked_fill(~keep, 0.0)


def _chunk_sum(per_position: Callable[..., Tensor], keep: Tensor, *rows: Tensor) -> Tensor:
    """Σ over kept rows of ``per_position(*rows)`` (:func:`_chunk_values` summed)."""
    return _chunk_values(per_position, keep, *rows).sum()


def _reduce(
    per_position: Callable[..., Tensor],
    rows: tuple[Tensor, ...],
    keep: Tensor,
    reduction: Reduction,
    chunk_size: int | None,
) -> Tensor:
    """Sum, mean or (``"none"``) the values of ``per_position`` over the kept
    positions, optionally in chunks.

    ``rows`` are ``(..., V)`` logits or ``(...)`` labels with the position
    axes of ``keep``; they are flattened to ``(N, ...)`` and cut into chunks
    of ``chunk_size`` positions.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    shape, n = keep.shape, keep.numel()
    flat = [r.reshape(n, *r.shape[keep.dim():]) for r in rows]
    keep = keep.reshape(n)
    chunk_fn = _chunk_values if reduction == "none" else _chunk_sum
    if chunk_size is None or chunk_size >= n:
        parts = [chunk_fn(per_position, keep, *flat)]
    else:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive number of positions, got {chunk_size}")
        # Checkpointing stores only each chunk's inputs (views of the logits)
        # and recomputes its float32 intermediates during the backward pass.
        parts = [
            checkpoint(chunk_fn, per_position, keep[i : i + chunk_size], *(r[i : i + chunk_size] for r in flat),
                       use_reentrant=False)
            for i in range(0, n, chunk_size)
        ]
    if reduction == "none":
        return torch.cat(parts).reshape(shape)
    total = sum(parts)
    if reduction == "sum":
        return total
    return total / keep.sum().clamp(min=1)


def _soft_divergence(
    per_position: Callable[[Tensor, Tensor], Tensor],
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None,
    temperature: float,
    reduction: Reduction,
    chunk_size: int | None,
) -> Tensor:
    """T² · reduce(per_position(log q, log p)) with p, q at temperature T."""
    _check_same_shape(student_logits, teacher_logits)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")

    def at_temperature(s: Tensor, t: Tensor) -> Tensor:
        return per_position(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1))

    keep = position_mask(student_logits, mask)
    total = _reduce(at_temperature, (student_logits, teacher_logits), keep, reduction, chunk_size)
    return total * temperature**2


# --------------------------------------------------------------------------- per-position values
# Each maps student and teacher log-probabilities (N, V) to values (N,).


def _forward_kl(log_q: Tensor, log_p: Tensor) -> Tensor:
    return kl_from_logprobs(log_p, log_q)


def _reverse_kl(log_q: Tensor, log_p: Tensor) -> Tensor:
    return kl_from_logprobs(log_q, log_p)


def _jsd(log_q: Tensor, log_p: Tensor, beta: float) -> Tensor:
    if beta == 0.0:
        return kl_from_logprobs(log_p, log_q)
    if beta == 1.0:
        return kl_from_logprobs(log_q, log_p)
    log_m = log_mixture(log_p, log_q, beta)
    return beta * kl_from_logprobs(log_p, log_m) + (1 - beta) * kl_from_logprobs(log_q, log_m)


def _skew_forward_kl(log_q: Tensor, log_p: Tensor, skew: float) -> Tensor:
    return kl_from_logprobs(log_p, log_mixture(log_p, log_q, skew))


def _skew_reverse_kl(log_q: Tensor, log_p: Tensor, skew: float) -> Tensor:
    return kl_from_logprobs(log_q, log_mixture(log_q, log_p, skew))


def _tvd(log_q: Tensor, log_p: Tensor) -> Tensor:
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)


# --------------------------------------------------------------------------- public losses


def forward_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    *,
    reduction: Reduction = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """Forward KL, T² · KL(p‖q) = T² Σ_v p_v (log p_v − log q_v).

    Mean-seeking: the student is pushed to cover all of the teacher's mass
    (Hinton et al. 2015; DistilBERT uses T = 2).
    """
    return _soft_divergence(_forward_kl, student_logits, teacher_logits, mask, temperature, reduction, chunk_size)


def reverse_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    *,
    reduction: Reduction = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """Reverse KL, T² · KL(q‖p) = T² Σ_v q_v (log q_v − log p_v).

    Mode-seeking: the student is not pushed to cover low-probability teacher
    regions (the token-level objective of MiniLLM, Gu et al. 2024).
    """
    return _soft_divergence(_reverse_kl, student_logits, teacher_logits, mask, temperature, reduction, chunk_size)


def generalized_jsd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    *,
    beta: float = 0.5,
    reduction: Reduction = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """Generalized Jensen–Shannon divergence (GKD, Agarwal et al. 2024).

    m = β p + (1 − β) q;  JSD_β = T² · [β KL(p‖m) + (1 − β) KL(q‖m)].
    The formula vanishes at the end points, so by convention β = 0 gives the
    forward KL(p‖q) and β = 1 the reverse KL(q‖p), as in GKD / TRL. β = 0.5 is
    the symmetric JSD, bounded by T² log 2.
    """
    _check_unit_interval("beta", beta)
    per_position = partial(_jsd, beta=beta)
    return _soft_divergence(per_position, student_logits, teacher_logits, mask, temperature, reduction, chunk_size)


def skew_forward_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    *,
    skew: float = 0.1,
    reduction: Reduction = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """Skew forward KL (DistiLLM, Ko et al. 2024): T² · KL(p ‖ λ p + (1 − λ) q).

    λ = ``skew``; λ = 0 is the forward KL, λ = 1 gives 0. Mixing p into the
    student side keeps the value finite where q_v = 0 < p_v.
    """
    _check_unit_interval("skew", skew)
    per_position = partial(_skew_forward_kl, skew=skew)
    return _soft_divergence(per_position, student_logits, teacher_logits, mask, temperature, reduction, chunk_size)


def skew_reverse_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    *,
    skew: float = 0.1,
    reduction: Reduction = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """Skew reverse KL (DistiLLM, Ko et al. 2024): T² · KL(q ‖ (1 − λ) p + λ q).

    λ = ``skew``; λ = 0 is the reverse KL, λ = 1 gives 0.
    """
    _check_unit_interval("skew", skew)
    per_position = partial(_skew_reverse_kl, skew=skew)
    return _soft_divergence(per_position, student_logits, teacher_logits, mask, temperature, reduction, chunk_size)


def total_variation(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    *,
    reduction: Reduction = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """Total variation distance, T² · ½ Σ_v |p_v − q_v| (in [0, T²])."""
    return _soft_divergence(_tvd, student_logits, teacher_logits, mask, temperature, reduction, chunk_size)


def logit_mse(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    *,
    reduction: Reduction = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """Squared error between raw logits, Σ_v (z_s,v − z_t,v)² per position.

    Summed over V like every other loss here (DistilBERT's ``MSELoss(sum) /
    n_positions``); TextBrewer's element mean is this divided by V. Matching
    logits needs no temperature: any T ≠ 1 is an error. Logits must be finite.
    """
    if temperature != 1.0:
        raise ValueError(f"logit_mse matches raw logits and takes no temperature, got {temperature}")
    _check_same_shape(student_logits, teacher_logits)

    def squared_error(s: Tensor, t: Tensor) -> Tensor:
        return (s - t).square().sum(-1)

    keep = position_mask(student_logits, mask)
    return _reduce(squared_error, (student_logits, teacher_logits), keep, reduction, chunk_size)


def cross_entropy(
    student_logits: Tensor,
    labels: Tensor,
    mask: Tensor | None = None,
    *,
    reduction: Reduction = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """Cross-entropy on hard labels, −log softmax(z_s)_y per position.

    ``labels`` ``(...)`` are aligned with the logits' positions (for a causal
    LM, shift the labels, not the logits); ``-100`` is ignored. The mean is
    over positions where ``mask`` holds and the label is not ``-100``.
    """
    def nll(s: Tensor, y: Tensor) -> Tensor:
        return torch.logsumexp(s, -1) - s.gather(-1, y[:, None]).squeeze(-1)

    keep = position_mask(student_logits, mask, labels)
    return _reduce(nll, (student_logits, labels), keep, reduction, chunk_size)
