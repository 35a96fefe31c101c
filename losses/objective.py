"""A training objective: a weighted sum of registered terms, built from a spec.

The objective returns a SUM over *items*, so that the training loop can divide
by the number of items in the whole optimizer step (not per micro-batch):

    total = Σ_terms weight · Σ_{items} value(item)

Items are the positions of the logits that count, ``position_mask(logits,
mask)``: for classification logits ``(B, C)`` the examples, for token logits
``(B, T, V)`` the tokens where ``mask`` holds (labels aligned with the logits:
shift the labels, not the logits). Cross-entropy adds 0 for items labelled
-100 (unlabelled transfer examples, prompt tokens) while the soft terms count
them; pass ``mask = labels != -100`` to leave such items out of every term.
Hidden-state and attention-relation terms are per token ``(B, T)``; they are
summed over the same items: for token items directly, for example items as
each example's mean over its tokens (``attention_mask``), so that
``total / n_items`` is a mean in every case.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from losses.attention import QKV, attention_relation_kl
from losses.divergences import position_mask
from losses.hidden import HiddenStateMatching, layer_map
from losses.registry import TERMS, Term, format_spec, parse_spec


@dataclass
class ModelOutputs:
    """What the objective reads from a student's or teacher's forward pass.

    logits: ``(B, C)`` or ``(B, T, V)``.
    hidden_states: ``L + 1`` tensors ``(B, T, H)`` (``output_hidden_states=True``).
    attention_mask: ``(B, T)``, 1 for real tokens.
    qkv: block index → (q, k, v) ``(B, T, W)``, from :func:`losses.attention.capture_qkv`.
    """

    logits: Tensor
    hidden_states: tuple[Tensor, ...] | None = None
    attention_mask: Tensor | None = None
    qkv: dict[int, QKV] | None = None


def sum_over_items(per_token: Tensor, token_mask: Tensor | None, items: Tensor) -> Tensor:
    """Σ over items of a per-token value ``(B, T)``.

    Token items ``(B, T)``: the sum over items. Example items ``(B,)``: each
    example's mean over the tokens of ``token_mask`` (all if ``None``), summed
    over the items.
    """
    if items.shape == per_token.shape:
        return per_token.masked_fill(~items, 0.0).sum()
    if items.shape == per_token.shape[:1]:
        tokens = torch.ones_like(per_token, dtype=torch.bool) if token_mask is None else token_mask.bool()
        per_example = per_token.masked_fill(~tokens, 0.0).sum(1) / tokens.sum(1).clamp(min=1)
        return per_example.masked_fill(~items, 0.0).sum()
    raise ValueError(
        f"per-token values {tuple(per_token.shape)} match neither token items nor example items {tuple(items.shape)}"
    )


def _require(value, what: str, hint: str):
    if value is None:
        raise ValueError(f"the objective needs {what}: {hint}")
    return value


class _LabelTerm(nn.Module):
    def __init__(self, term: Term):
        super().__init__()
        self.fn, self.kwargs = TERMS[term.name].fn, dict(term.params)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, labels: Tensor | None, items: Tensor):
        labels = _require(labels, "labels", "pass labels= for a 'ce' term")
        return self.fn(student.logits, labels, items, reduction="sum", **self.kwargs)


class _LogitTerm(nn.Module):
    def __init__(self, term: Term):
        super().__init__()
        self.fn = TERMS[term.name].fn
        self.kwargs = {"temperature" if k == "T" else k: v for k, v in term.params.items()}

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, labels: Tensor | None, items: Tensor,
                reduction: str = "sum"):
        return self.fn(student.logits, teacher.logits, items, reduction=reduction, **self.kwargs)


class _HiddenTerm(nn.Module):
    def __init__(self, term: Term, student_hidden_size, teacher_hidden_size, student_num_layers, teacher_num_layers):
        super().__init__()
        dims = dict(student_hidden_size=student_hidden_size, teacher_hidden_size=teacher_hidden_size,
                    student_num_layers=student_num_layers, teacher_num_layers=teacher_num_layers)
        missing = [k for k, v in dims.items() if v is None]
        if missing:
            raise ValueError(f"{term.name!r} needs build_objective(..., {', '.join(f'{k}=' for k in missing)})")
        pairs = layer_map(term.params["map"], student_num_layers, teacher_num_layers)
        distance = "mse" if term.name == "hidden_mse" else "cosine"
        self.matching = HiddenStateMatching(distance, pairs, student_hidden_size, teacher_hidden_size)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, labels: Tensor | None, items: Tensor):
        hint = "call the models with output_hidden_states=True"
        per_token = self.matching(
            _require(student.hidden_states, "student hidden states", hint),
            _require(teacher.hidden_states, "teacher hidden states", hint),
        )
        return sum_over_items(per_token, student.attention_mask, items)


class _AttentionTerm(nn.Module):
    def __init__(self, term: Term):
        super().__init__()
        self.layer, self.teacher_layer, self.heads = (term.params[k] for k in ("layer", "teacher_layer", "heads"))

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, labels: Tensor | None, items: Tensor):
        def qkv(outputs: ModelOutputs, layer: int, who: str) -> QKV:
            hint = f"run the {who} inside losses.capture_qkv({who}, {layer})"
            return _require((outputs.qkv or {}).get(layer), f"the {who}'s q/k/v of layer {layer}", hint)

        per_token = attention_relation_kl(
            qkv(student, self.layer, "student"),
            qkv(teacher, self.teacher_layer, "teacher"),
            self.heads,
            student.attention_mask,
        )
        return sum_over_items(per_token, student.attention_mask, items)


class DistillationObjective(nn.Module):
    """Σ_terms weight · (sum over items of the term); see the module docstring.

    Learned parts (hidden-state projections) are submodules: give
    ``objective.parameters()`` to the optimizer and save its ``state_dict``
    with the student.
    """

    def __init__(self, terms: list[Term], losses: list[nn.Module]):
        super().__init__()
        self._terms = list(terms)
        self.losses = nn.ModuleList(losses)
        names = [t.name for t in self._terms]
        self._part_names = [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]

    @property
    def terms(self) -> list[Term]:
        """The (name, weight, params) of each term, parameters resolved."""
        return list(self._terms)

    def _inputs(self) -> set[str]:
        return {TERMS[t.name].inputs for t in self._terms}

    @property
    def needs_teacher(self) -> bool:
        return bool(self._inputs() - {"labels"})

    @property
    def needs_hidden_states(self) -> bool:
        return "hidden" in self._inputs()

    @property
    def needs_attention_relations(self) -> bool:
        return "attention" in self._inputs()

    @property
    def student_qkv_layers(self) -> tuple[int, ...]:
        """Block indices to pass to ``capture_qkv(student, ...)``."""
        return tuple(sorted({t.params["layer"] for t in self._terms if t.name == "attn_rel"}))

    @property
    def teacher_qkv_layers(self) -> tuple[int, ...]:
        """Block indices to pass to ``capture_qkv(teacher, ...)``."""
        return tuple(sorted({t.params["teacher_layer"] for t in self._terms if t.name == "attn_rel"}))

    @property
    def spec(self) -> str:
        """The canonical spec; ``build_objective(objective.spec, ...)`` rebuilds it."""
        return format_spec(self._terms)

    def __str__(self) -> str:
        return self.spec

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}"

    def forward(
        self,
        student: ModelOutputs,
        teacher: ModelOutputs | None = None,
        labels: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted sum over items (float32 scalar) and each term's mean per item
        (detached 0-d tensors, name → mean).

        ``mask``: bool ``logits.shape[:-1]``, the positions that count (None: all).
        Returns tensors only: no host synchronisation, so a GPU keeps its queue
        of work full (call ``.item()`` where you log).
        """
        if self.needs_teacher and teacher is None:
            raise ValueError(f"objective {self.spec!r} needs teacher outputs")
        items = position_mask(student.logits, mask)
        sums = [loss(student, teacher, labels, items) for loss in self.losses]
        total = sum(t.weight * s for t, s in zip(self._terms, sums))
        count = items.sum().clamp(min=1)
        return total, {name: s.detach() / count for name, s in zip(self._part_names, sums)}

    def per_position(self, student: ModelOutputs, teacher: ModelOutputs, mask: Tensor | None = None) -> Tensor:
        """Σ_terms weight · value at each position: ``logits.shape[:-1]`` float32,
        0 where ``mask`` is False, for objectives of soft logit terms only (the
        token-level ones). For sums with their own normalisation, such as one
        mean per sequence; no host synchronisation.
        """
        wrong = [t.name for t in self._terms if TERMS[t.name].inputs != "logits"]
        if wrong:
            raise ValueError(f"per-position values exist for soft logit terms only, not {wrong}")
        items = position_mask(student.logits, mask)
        return sum(t.weight * loss(student, teacher, None, items, reduction="none")
                   for t, loss in zip(self._terms, self.losses))


def build_objective(
    spec: str,
    student_hidden_size: int | None = None,
    teacher_hidden_size: int | None = None,
    student_num_layers: int | None = None,
    teacher_num_layers: int | None = None,
) -> DistillationObjective:
    """Parse ``spec`` (grammar in :mod:`losses.registry`) into an objective.

    The sizes are needed only by hidden-state terms (layer map, projections).
    """
    terms = parse_spec(spec)
    losses = []
    for term in terms:
        inputs = TERMS[term.name].inputs
        if inputs == "labels":
            losses.append(_LabelTerm(term))
        elif inputs == "logits":
            losses.append(_LogitTerm(term))
        elif inputs == "hidden":
            losses.append(_HiddenTerm(term, student_hidden_size, teacher_hidden_size,
                                      student_num_layers, teacher_num_layers))
        else:
            losses.append(_AttentionTerm(term))
    return DistillationObjective(terms, losses)
