"""Self-attention relation distillation (MiniLMv2, Wang et al. 2021).

For one layer, the query, key and value projections' outputs X ∈ {Q, K, V}
``(B, T, W)`` are split into ``A`` relation heads of width d_r = W / A, and
each gives a relation between tokens:

    R_X[b, a] = softmax(X_a X_aᵀ / sqrt(d_r))            (B, A, T, T), row-wise

The loss per query token t is

    value[b, t] = Σ_{X ∈ {Q, K, V}} (1/A) Σ_a KL(R^teacher_X[b, a, t] ‖ R^student_X[b, a, t])

Student and teacher may differ in width (d_r differs, A must be the same).
Padded keys are excluded from the softmax; padded query rows are left for the
caller to mask (:mod:`losses.objective` does). Relations of a decoder are
taken over all keys, not causally: they are targets, not attention.

:func:`capture_qkv` records the projections' outputs with forward hooks.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch.nn.functional as F
from torch import Tensor, nn

from losses.divergences import kl_from_logprobs

QKV = tuple[Tensor, Tensor, Tensor]

# Where each layout keeps block i's query / key / value projections (module names).
# RoBERTa, XLM-R and ELECTRA have BERT's layout.
QKV_LAYOUTS = {
    "bert": ("encoder.layer.{i}.attention.self", ("query", "key", "value")),
    "mpnet": ("encoder.layer.{i}.attention.attn", ("q", "k", "v")),
    "distilbert": ("transformer.layer.{i}.attention", ("q_lin", "k_lin", "v_lin")),
    "llama": ("layers.{i}.self_attn", ("q_proj", "k_proj", "v_proj")),
}


def find_qkv_projections(model: nn.Module, layer: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The query, key and value projection modules of transformer block ``layer``.

    ``layer`` is 0-based over the blocks (negative counts from the end); note
    that hidden-state index ``i`` is the *output* of block ``i − 1``. Works for
    BERT- (RoBERTa, ...), MPNet-, DistilBERT- and Llama-style models, wrapped or not (PEFT, task
    heads): the names are matched as suffixes, e.g. ``bert.encoder.layer.3.
    attention.self.query`` or ``base_model.model.model.layers.3.self_attn.q_proj``.
    """
    names = dict(model.named_modules())
    for template, roles in QKV_LAYOUTS.values():
        block_pattern = re.escape(template).replace(re.escape("{i}"), r"(\d+)")
        pattern = re.compile(rf"(?:^|\.){block_pattern}\.({'|'.join(roles)})$")
        found: dict[int, dict[str, nn.Module]] = {}
        for name, module in names.items():
            if match := pattern.search(name):
                found.setdefault(int(match.group(1)), {})[match.group(2)] = module
        if found:
            num_layers = max(found) + 1
            if not -num_layers <= layer < num_layers:
                raise IndexError(f"layer {layer} out of range for a model with {num_layers} layers")
            block = found[layer % num_layers]
            return tuple(block[role] for role in roles)
    known = "; ".join(f"{arch}: {template}.{{{','.join(roles)}}}" for arch, (template, roles) in QKV_LAYOUTS.items())
    raise ValueError(f"no query/key/value projections found in {type(model).__name__}; known layouts: {known}")


@contextmanager
def capture_qkv(model: nn.Module, layers: int | Iterable[int]) -> Iterator[dict[int, QKV]]:
    """Record the Q, K, V projections' outputs ``(B, T, W)`` of the given blocks.

    Yields a dict ``layer → (q, k, v)`` (keys as passed, e.g. ``-1``) that
    every forward pass inside the ``with`` block refills; the hooks are
    removed on exit::

        with capture_qkv(student, -1) as qkv:
            out = student(**batch)
        q, k, v = qkv[-1]
    """
    layers = [layers] if isinstance(layers, int) else list(layers)
    captured: dict[int, QKV] = {}

    def recorder(layer: int, role: int):
        def hook(module: nn.Module, args, output: Tensor) -> None:
            qkv = list(captured.get(layer, (None, None, None)))
            qkv[role] = output
            captured[layer] = tuple(qkv)
        return hook

    handles = [
        module.register_forward_hook(recorder(layer, role))
        for layer in layers
        for role, module in enumerate(find_qkv_projections(model, layer))
    ]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def relation_log_probs(x: Tensor, num_heads: int, key_mask: Tensor | None = None) -> Tensor:
    """log softmax(X_a X_aᵀ / sqrt(d_r)) per relation head: ``(B, T, W) → (B, A, T, T)``.

    ``key_mask`` ``(B, T)`` bool: keys where it is False get probability 0.
    """
    b, t, width = x.shape
    if width % num_heads:
        raise ValueError(f"width {width} is not divisible by {num_heads} relation heads")
    head_dim = width // num_heads
    x = x.float().view(b, t, num_heads, head_dim).transpose(1, 2)  # (B, A, T, d_r)
    scores = x @ x.transpose(-1, -2) / math.sqrt(head_dim)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask.bool()[:, None, None, :], float("-inf"))
    return F.log_softmax(scores, dim=-1)


def attention_relation_kl(
    student_qkv: Sequence[Tensor],
    teacher_qkv: Sequence[Tensor],
    num_heads: int,
    attention_mask: Tensor | None = None,
) -> Tensor:
    """MiniLMv2 relation loss per query token, ``(B, T)`` (see the module docstring).

    ``student_qkv`` and ``teacher_qkv``: (q, k, v) each ``(B, T, W)``;
    ``attention_mask`` ``(B, T)``: padded keys are excluded from the softmax.
    """
    total = 0.0
    for student_x, teacher_x in zip(student_qkv, teacher_qkv, strict=True):
        log_student = relation_log_probs(student_x, num_heads, attention_mask)
        log_teacher = relation_log_probs(teacher_x, num_heads, attention_mask)
        total = total + kl_from_logprobs(log_teacher, log_student).mean(1)
    return total
