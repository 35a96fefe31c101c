"""Student builders for encoder classifiers.

Three ways to get a student:

- :func:`student_from_teacher`: the teacher's class and width, fewer layers,
  every weight copied from the teacher (DistilBERT's initialisation);
- :func:`narrow_student`: the teacher's model type with a smaller hidden size,
  randomly initialised (hidden states are matched through projections in
  ``losses/``);
- :func:`student_from_config`: any encoder by hub name or path, pretrained or
  fresh.

Vocabulary pruning is in :mod:`models.vocabulary`.
"""
from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn

LayerSelection = Literal["evenly_spaced", "first"]

_LAYER_LISTS = ("encoder.layer", "transformer.layer")
"""Where encoder blocks live under the backbone: ``encoder.layer`` in BERT,
RoBERTa, XLM-R, ELECTRA; ``transformer.layer`` in DistilBERT."""


def check_layer_selection(selection) -> None:
    """Refuse the old name ``every_other``, which said less than what the rule does."""
    if selection == "every_other":
        raise ValueError("layer_selection 'every_other' was renamed 'evenly_spaced' (evenly spaced layers, "
                         "both ends kept); use student.layer_selection=evenly_spaced")


def select_layers(teacher_layers: int, num_layers: int, selection: LayerSelection | list[int] = "evenly_spaced") -> list[int]:
    """Which teacher layer initialises each student layer: ``map[i]`` (0-based).

    ``"evenly_spaced"`` is DistilBERT's rule generalised to any depth: evenly
    spaced layers that always include the first and the last,

        map[i] = round_half_up(i * (Lt - 1) / (Ls - 1)),   i = 0 .. Ls-1

    (``[0]`` when Ls = 1). For 12 -> 6 this is ``[0, 2, 4, 7, 9, 11]``, exactly
    the layers DistilBERT's extraction script copied from BERT-base; for
    6 -> 3 it is ``[0, 3, 5]``. Both ends are kept because the copied
    embeddings feed the first layer and the copied pooler and head read the
    last one: each keeps the input (output) distribution it was trained with,
    and only the middle of the stack is thinned.

    ``"first"`` is ``[0, 1, ..., Ls-1]`` (truncating the teacher). A list is
    taken as the map itself.
    """
    if not 1 <= num_layers <= teacher_layers:
        raise ValueError(f"a student of a {teacher_layers}-layer teacher needs 1..{teacher_layers} layers, got {num_layers}")
    check_layer_selection(selection)
    if selection == "evenly_spaced":
        if num_layers == 1:
            return [0]
        span, steps = teacher_layers - 1, num_layers - 1
        # Integer half-up rounding: Python's round() rounds 2.5 to 2.
        return [(2 * i * span + steps) // (2 * steps) for i in range(num_layers)]
    if selection == "first":
        return list(range(num_layers))
    if isinstance(selection, (list, tuple)):
        layers = [int(j) for j in selection]
        if len(layers) != num_layers or not all(0 <= j < teacher_layers for j in layers):
            raise ValueError(
                f"layer map {layers} must list {num_layers} teacher layers, each in 0..{teacher_layers - 1}"
            )
        return layers
    raise ValueError(f"layer_selection must be 'evenly_spaced', 'first' or a list of ints, got {selection!r}")


def encoder_layers_key(model: nn.Module) -> str:
    """State-dict prefix of the model's list of encoder blocks
    (``bert.encoder.layer``, ``distilbert.transformer.layer``, ...)."""
    base = model.base_model
    prefix = "" if base is model else model.base_model_prefix + "."
    for path in _LAYER_LISTS:
        module = base
        for name in path.split("."):
            module = getattr(module, name, None)
        if isinstance(module, nn.ModuleList):
            return prefix + path
    raise ValueError(
        f"{type(model).__name__} has no encoder layer list at {' or '.join(_LAYER_LISTS)} under "
        f"its backbone: student_from_teacher supports BERT-like encoders (BERT, RoBERTa, DistilBERT, ...)"
    )


def student_from_teacher(
    teacher: nn.Module, num_layers: int, layer_selection: LayerSelection | list[int] = "evenly_spaced"
) -> nn.Module:
    """A copy of ``teacher`` with ``num_layers`` encoder layers.

    The student has the teacher's class and config except depth. Embeddings,
    pooler and classification head are copied; student layer ``i`` is a copy
    of teacher layer ``map[i]`` with ``map = select_layers(...)``. The map is
    stored as ``config.distilled_from_layers`` so that it is saved with the
    student. The student is on the teacher's device and in its dtype.
    """
    layers_key = encoder_layers_key(teacher)
    layer_map = select_layers(teacher.config.num_hidden_layers, num_layers, layer_selection)

    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = num_layers  # DistilBertConfig maps this to n_layers
    config.distilled_from_layers = layer_map
    student = type(teacher)(config)

    source = teacher.state_dict()
    state = {}
    for key in student.state_dict():
        if key.startswith(layers_key + "."):
            index, rest = key[len(layers_key) + 1 :].split(".", 1)
            state[key] = source[f"{layers_key}.{layer_map[int(index)]}.{rest}"]
        else:
            state[key] = source[key]
    student.load_state_dict(state, strict=True)
    reference = next(teacher.parameters())
    return student.to(device=reference.device, dtype=reference.dtype)


def narrow_student(
    teacher_config,
    num_layers: int,
    hidden_size: int,
    num_attention_heads: int | None = None,
    intermediate_size: int | None = None,
) -> nn.Module:
    """A randomly initialised classifier of the teacher's model type, narrower.

    Keeps the teacher's labels, vocabulary and everything else in its config;
    sets depth ``num_layers``, width ``hidden_size``, ``num_attention_heads``
    (default: the teacher's, as MiniLM and TinyBERT keep BERT's 12 heads) and
    FFN width ``intermediate_size`` (default ``4 * hidden_size``). Its hidden
    states are ``(B, T, hidden_size)``, so matching them to the teacher's
    needs a projection (``losses/``).
    """
    from transformers import AutoModelForSequenceClassification

    heads = num_attention_heads or teacher_config.num_attention_heads
    if hidden_size % heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by {heads} attention heads")
    config = copy.deepcopy(teacher_config)
    config.num_hidden_layers = num_layers
    config.hidden_size = hidden_size
    config.num_attention_heads = heads
    # DistilBERT calls the FFN width hidden_dim; the others intermediate_size.
    ffn_key = "hidden_dim" if config.model_type == "distilbert" else "intermediate_size"
    setattr(config, ffn_key, intermediate_size or 4 * hidden_size)
    if hasattr(config, "distilled_from_layers"):
        del config.distilled_from_layers  # fresh weights: no layer came from a teacher
    return AutoModelForSequenceClassification.from_config(config)  # SDPA where the family has it


def student_from_config(name_or_path: str, pretrained: bool = True, num_labels: int = 2) -> nn.Module:
    """Any encoder as a classifier with a fresh head: a hub name
    (``distilbert-base-uncased``), a folder or ``packaged:minilm``; pretrained
    weights, or random ones from its config with ``pretrained=False``."""
    from models.encoder import LABEL_NAMES, build_classifier

    # build_classifier names the labels LABEL_NAMES, which would silently
    # override any other num_labels.
    if num_labels != len(LABEL_NAMES):
        raise ValueError(f"classifiers here have the {len(LABEL_NAMES)} labels {LABEL_NAMES}, got num_labels={num_labels}")
    return build_classifier(name_or_path, pretrained=pretrained)
