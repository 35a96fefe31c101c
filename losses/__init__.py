"""Distillation objectives: small pure functions and modules, one family per file.

- :mod:`losses.divergences`: divergences between logits, and cross-entropy;
- :mod:`losses.hidden`: hidden-state matching with layer maps and projections;
- :mod:`losses.attention`: MiniLMv2 attention relations and ``capture_qkv``;
- :mod:`losses.registry`: the term names and the spec grammar;
- :mod:`losses.objective`: a weighted objective built from a spec.

See ``losses/README.md`` for the table of losses and the grammar.
"""
from losses.attention import attention_relation_kl, capture_qkv, find_qkv_projections, relation_log_probs
from losses.divergences import (
    count_positions,
    cross_entropy,
    forward_kl,
    generalized_jsd,
    logit_mse,
    position_mask,
    reverse_kl,
    skew_forward_kl,
    skew_reverse_kl,
    total_variation,
)
from losses.hidden import HiddenStateMatching, hidden_cosine, hidden_mse, layer_map
from losses.objective import DistillationObjective, ModelOutputs, build_objective
from losses.registry import TERMS, Term, format_spec, parse_spec

__all__ = [
    "DistillationObjective",
    "HiddenStateMatching",
    "ModelOutputs",
    "TERMS",
    "Term",
    "attention_relation_kl",
    "build_objective",
    "capture_qkv",
    "count_positions",
    "cross_entropy",
    "find_qkv_projections",
    "format_spec",
    "forward_kl",
    "generalized_jsd",
    "hidden_cosine",
    "hidden_mse",
    "layer_map",
    "logit_mse",
    "parse_spec",
    "position_mask",
    "relation_log_probs",
    "reverse_kl",
    "skew_forward_kl",
    "skew_reverse_kl",
    "total_variation",
]
