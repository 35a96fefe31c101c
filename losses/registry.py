"""The known objective terms and the spec grammar that names them.

A spec is a comma-separated list of weighted terms::

    spec  := term ("," term)*
    term  := name [":" weight] ("@" key "=" value)*
    e.g.     ce:0.5,rkl:0.5@T=2,hidden_mse:1@map=1-2+2-4+3-6,attn_rel:1@layer=-1@heads=12

The weight defaults to 1.0; parameters not given take the defaults below.
:func:`parse_spec` and :func:`format_spec` are inverses on canonical specs
(every parameter spelled out, in the order of :data:`TERMS`).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from losses.divergences import (
    cross_entropy,
    forward_kl,
    generalized_jsd,
    logit_mse,
    reverse_kl,
    skew_forward_kl,
    skew_reverse_kl,
    total_variation,
)


@dataclass(frozen=True)
class TermType:
    """What a term name means: the inputs it reads, its parameters, its function."""

    inputs: Literal["labels", "logits", "hidden", "attention"]
    params: dict[str, tuple[type, Any]]  # spec key → (type, default); default None: unset
    summary: str
    fn: Callable | None = None  # the divergence, for "labels" and "logits" terms


class Term(NamedTuple):
    """One weighted term of an objective, its parameters fully resolved."""

    name: str
    weight: float
    params: dict[str, Any]


_CHUNK = {"chunk_size": (int, None)}
_SOFT = {"T": (float, 1.0), **_CHUNK}

TERMS: dict[str, TermType] = {
    "ce": TermType("labels", _CHUNK, "cross-entropy on hard labels", cross_entropy),
    "fkl": TermType("logits", _SOFT, "forward KL(p‖q)", forward_kl),
    "rkl": TermType("logits", _SOFT, "reverse KL(q‖p)", reverse_kl),
    "jsd": TermType("logits", {"beta": (float, 0.5), **_SOFT}, "generalized JSD(β)", generalized_jsd),
    "skl": TermType("logits", {"skew": (float, 0.1), **_SOFT}, "skew forward KL(λ)", skew_forward_kl),
    "srkl": TermType("logits", {"skew": (float, 0.1), **_SOFT}, "skew reverse KL(λ)", skew_reverse_kl),
    "tvd": TermType("logits", _SOFT, "total variation distance", total_variation),
    "logit_mse": TermType("logits", _CHUNK, "squared error of raw logits", logit_mse),
    "hidden_mse": TermType("hidden", {"map": (str, "uniform")}, "hidden-state MSE"),
    "hidden_cos": TermType("hidden", {"map": (str, "last")}, "hidden-state cosine distance"),
    "attn_rel": TermType(
        "attention",
        {"layer": (int, -1), "teacher_layer": (int, -1), "heads": (int, 12)},
        "MiniLMv2 self-attention relations",
    ),
}

# Ranges checked when parsing, so that a bad config fails before any model loads.
_VALID_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "T": (lambda v: math.isfinite(v) and v > 0, "> 0 and finite"),
    "beta": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "skew": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "chunk_size": (lambda v: v >= 1, ">= 1"),
    "heads": (lambda v: v >= 1, ">= 1"),
}


def parse_spec(spec: str) -> list[Term]:
    """Parse ``"ce:0.5,rkl:0.5@T=2"`` into terms; ValueError naming what is known."""
    terms = [_parse_term(text.strip()) for text in spec.split(",") if text.strip()]
    if not terms:
        raise ValueError(f"empty objective spec {spec!r}; known terms: {', '.join(TERMS)}")
    return terms


def _parse_term(text: str) -> Term:
    head, *assignments = (part.strip() for part in text.split("@"))
    name, _, weight_text = (part.strip() for part in head.partition(":"))
    if name not in TERMS:
        raise ValueError(f"unknown loss term {name!r} in {text!r}; known terms: {', '.join(TERMS)}")
    try:
        weight = float(weight_text) if weight_text else 1.0
    except ValueError:
        raise ValueError(f"{text!r}: weight {weight_text!r} is not a number") from None
    if not (math.isfinite(weight) and weight >= 0):
        raise ValueError(f"{text!r}: weight must be a finite number ≥ 0, got {weight_text}")

    known = TERMS[name].params
    params = {key: default for key, (_, default) in known.items()}
    given = set()
    for assignment in assignments:
        key, eq, value = (part.strip() for part in assignment.partition("="))
        if key not in known:
            listed = ", ".join(known) or "none"
            raise ValueError(f"unknown parameter {key!r} for {name!r} in {text!r}; known parameters: {listed}")
        if not eq or not value:
            raise ValueError(f"{text!r}: parameter {key!r} needs a value, as in {key}=...")
        if key in given:
            raise ValueError(f"{text!r}: parameter {key!r} given twice")
        given.add(key)
        kind = known[key][0]
        try:
            params[key] = kind(value)
        except ValueError:
            raise ValueError(f"{text!r}: {key}={value!r} is not a valid {kind.__name__}") from None
        in_range, expected = _VALID_RANGES.get(key, (lambda v: True, ""))
        if not in_range(params[key]):
            raise ValueError(f"{text!r}: {key} must be {expected}, got {value}")
    return Term(name, weight, params)


def format_spec(terms: list[Term]) -> str:
    """The canonical spec of ``terms``: every set parameter, in registry order."""
    def value(v: Any) -> str:
        return repr(v) if isinstance(v, float) else str(v)

    return ",".join(
        f"{t.name}:{t.weight!r}" + "".join(f"@{k}={value(v)}" for k, v in t.params.items() if v is not None)
        for t in terms
    )
