"""Hidden-state matching between student and teacher layers.

Hidden states follow the Hugging Face convention: a tuple of ``L + 1``
tensors ``(B, T, H)``, index 0 the embeddings and index ``i`` the output of
layer ``i``. A layer map pairs student layer indices with teacher layer
indices; where the widths differ, a learned ``nn.Linear(H_s, H_t)`` per pair
projects the student side (FitNets' regressor, TinyBERT's W_h).

The values here are per token ``(B, T)``; how tokens become the loss's items
(tokens, or examples) is :mod:`losses.objective`'s business.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

LayerPairs = list[tuple[int, int]]


def layer_map(spec: str | Sequence[tuple[int, int]], student_num_layers: int, teacher_num_layers: int) -> LayerPairs:
    """Resolve a layer map to (student layer, teacher layer) pairs, indices in ``0..L``.

    - ``"uniform"``: student layer i ↦ teacher layer i·L_t // L_s for i = 1..L_s
      (a 3-layer student of a 6-layer teacher matches teacher layers 2, 4, 6);
    - ``"last"``: L_s ↦ L_t;
    - ``"1-2+2-4"`` or ``[(1, 2), (2, 4)]``: explicit pairs.
    """
    ls, lt = student_num_layers, teacher_num_layers
    if spec == "uniform":
        pairs = [(i, i * lt // ls) for i in range(1, ls + 1)]
    elif spec == "last":
        pairs = [(ls, lt)]
    elif isinstance(spec, str):
        try:
            pairs = [tuple(int(x) for x in pair.split("-", 1)) for pair in spec.split("+")]
        except ValueError:
            pairs = []
        if not pairs or any(len(p) != 2 for p in pairs):
            raise ValueError(f"layer map {spec!r}: expected 'uniform', 'last' or pairs like '1-2+2-4'")
    else:
        pairs = [(int(s), int(t)) for s, t in spec]
    for s, t in pairs:
        if not (0 <= s <= ls and 0 <= t <= lt):
            raise ValueError(f"layer map {spec!r}: pair {s}-{t} out of range (student 0..{ls}, teacher 0..{lt})")
    return pairs


def hidden_mse(student: Tensor, teacher: Tensor) -> Tensor:
    """Per-token mean squared error over the hidden axis: ``(B, T, H) → (B, T)``."""
    return (student.float() - teacher.float()).square().mean(-1)


def hidden_cosine(student: Tensor, teacher: Tensor) -> Tensor:
    """Per-token cosine distance 1 − cos(s, t): ``(B, T, H) → (B, T)``."""
    return 1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)


class HiddenStateMatching(nn.Module):
    """Distance between matched layers, averaged over the pairs: ``(B, T)`` per token.

        value[b, t] = (1/|pairs|) Σ_{(i, j) ∈ pairs} d(W_i h^s_i[b, t], h^t_j[b, t])

    with ``d`` the MSE (mean over H_t) or cosine distance, and ``W_i`` a
    learned linear projection where H_s ≠ H_t (identity otherwise). Averaging
    over pairs keeps the scale of the term independent of the layer map.
    """

    def __init__(
        self,
        distance: Literal["mse", "cosine"],
        pairs: LayerPairs,
        student_hidden_size: int,
        teacher_hidden_size: int,
    ):
        super().__init__()
        distances = {"mse": hidden_mse, "cosine": hidden_cosine}
        if distance not in distances:
            raise ValueError(f"distance must be one of {sorted(distances)}, got {distance!r}")
        self.distance = distances[distance]
        self.pairs = list(pairs)
        self.projections = (
            nn.ModuleList(nn.Linear(student_hidden_size, teacher_hidden_size) for _ in self.pairs)
            if student_hidden_size != teacher_hidden_size
            else None
        )

    def forward(self, student_hidden_states: Sequence[Tensor], teacher_hidden_states: Sequence[Tensor]) -> Tensor:
        total = 0.0
        for k, (i, j) in enumerate(self.pairs):
            student = student_hidden_states[i]
            if self.projections is not None:
                projection = self.projections[k]
                student = projection(student.to(projection.weight.dtype))
            total = total + self.distance(student, teacher_hidden_states[j])
        return total / len(self.pairs)
