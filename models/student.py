"""Student builders and vocabulary pruning for encoder classifiers.

Three ways to get a student:

- :func:`student_from_teacher`: the teacher's class and width, fewer layers,
  every weight copied from the teacher (DistilBERT's initialisation);
- :func:`narrow_student`: the teacher's model type with a smaller hidden size,
  randomly initialised (hidden states are matched through projections in
  ``losses/``);
- :func:`student_from_config`: any encoder by hub name or path, pretrained or
  fresh.

Vocabulary pruning (:func:`token_ids_in`, :func:`prune_vocabulary`) keeps only
the embedding rows of the tokens that the training URLs use. For the 6-layer,
384-wide MiniLM the 30,522 x 384 word-embedding matrix is 11.7 M of its 22.7 M
parameters. The 11,430 Hannousse URLs use 9,112 of those rows (30%): pruned,
the MiniLM shrinks from 22.7 M to 14.5 M parameters (90.9 -> 58.0 MB in fp32).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Literal

import torch
from torch import nn

LayerSelection = Literal["every_other", "first"]

_LAYER_LISTS = ("encoder.layer", "transformer.layer")
"""Where encoder blocks live under the backbone: ``encoder.layer`` in BERT,
RoBERTa, XLM-R, ELECTRA; ``transformer.layer`` in DistilBERT."""

_TOKEN_ID_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id")
"""Config fields that hold a token id and must follow the pruned vocabulary."""


# --------------------------------------------------------------------------- students


def select_layers(teacher_layers: int, num_layers: int, selection: LayerSelection | list[int] = "every_other") -> list[int]:
    """Which teacher layer initialises each student layer: ``map[i]`` (0-based).

    ``"every_other"`` is DistilBERT's rule generalised to any depth: evenly
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
    if selection == "every_other":
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
    raise ValueError(f"layer_selection must be 'every_other', 'first' or a list of ints, got {selection!r}")


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
    teacher: nn.Module, num_layers: int, layer_selection: LayerSelection | list[int] = "every_other"
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
    return AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")


def student_from_config(name_or_path: str, pretrained: bool = True, num_labels: int = 2) -> nn.Module:
    """Any encoder as a classifier with a fresh head: a hub name
    (``distilbert-base-uncased``), a folder or ``packaged:minilm``; pretrained
    weights, or random ones from its config with ``pretrained=False``."""
    from kd.classifier import build_classifier
    from kd.config import ModelConfig
    from kd.sources import LABEL_NAMES

    # build_classifier names the labels LABEL_NAMES, which would silently
    # override any other num_labels.
    if num_labels != len(LABEL_NAMES):
        raise ValueError(f"classifiers here have the {len(LABEL_NAMES)} labels {LABEL_NAMES}, got num_labels={num_labels}")
    return build_classifier(ModelConfig(name_or_path=name_or_path, pretrained=pretrained), num_labels=num_labels)


# --------------------------------------------------------------------------- vocabulary pruning


def token_ids_in(texts: list[str], tokenizer, max_length: int = 128) -> list[int]:
    """Sorted ids of every token in ``texts`` (tokenised as training does:
    special tokens added, truncated to ``max_length``), plus all special and
    added tokens (``[PAD]``, ``[UNK]``, ``[CLS]``, ``[SEP]``, ``[MASK]``)."""
    ids = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder) | {tokenizer.unk_token_id}
    for row in tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]:
        ids.update(row)
    ids.discard(None)
    return sorted(ids)


def prune_vocabulary(model: nn.Module, tokenizer, keep_ids: list[int], out_dir: str | Path | None = None):
    """Keep only the vocabulary entries ``keep_ids``; return ``(model, tokenizer)``.

    New id of a kept token = its rank in ``sorted(keep_ids)``. The model is a
    copy whose word-embedding matrix ``(V, H)`` becomes ``(K, H)`` with rows
    ``E[keep_ids]`` (an MLM output layer ``(K, H)`` and bias ``(K,)`` likewise,
    tied again if it was tied); ``config.vocab_size = K`` and the config's
    special-token ids are remapped. The tokenizer is the old backend
    (normaliser: lower-casing, accent stripping; pre-tokeniser; ``##``
    continuation prefix; post-processor) with only the vocabulary replaced.
    With ``out_dir`` both are saved there and load with
    ``AutoModelForSequenceClassification`` / ``AutoTokenizer``.

    Equivalence. WordPiece segments each pre-token greedily, always taking the
    longest vocabulary piece at the current position. If every piece of a word
    was kept, the longest match at each step is still present and nothing
    longer was added, so the segmentation, the (remapped) ids and the model's
    outputs are identical. This holds for all texts that ``keep_ids`` came
    from (:func:`token_ids_in`): "the same outputs on in-vocabulary text".

    Other words differ from the unpruned model: a word whose pieces were
    removed is re-segmented greedily over the kept pieces (``banks`` ->
    ``bank ##s`` when only those survive) or, when no segmentation by kept
    pieces exists, becomes a single ``[UNK]`` (WordPiece marks whole words
    unknown, not pieces).
    """
    keep = sorted(set(int(i) for i in keep_ids))
    tokenizer = _pruned_tokenizer(tokenizer, keep)
    model = _pruned_model(model, keep)
    if out_dir is not None:
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
    return model, tokenizer


def _pruned_tokenizer(tokenizer, keep: list[int]):
    """The tokenizer with vocabulary ``keep`` (old ids) renumbered 0..K-1."""
    from tokenizers import Tokenizer

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"]["type"] != "WordPiece":
        raise ValueError(f"vocabulary pruning supports WordPiece tokenizers, not {spec['model']['type']}")
    old_token = {i: token for token, i in tokenizer.get_vocab().items()}
    new_id = {old_token[i]: rank for rank, i in enumerate(keep)}
    missing = [a["content"] for a in spec["added_tokens"] if a["content"] not in new_id]
    if missing or spec["model"]["unk_token"] not in new_id:
        raise ValueError(f"keep_ids must include every special token and [UNK]; missing {missing or spec['model']['unk_token']}")

    spec["model"]["vocab"] = new_id
    for added in spec["added_tokens"]:
        added["id"] = new_id[added["content"]]
    if spec.get("padding"):
        spec["padding"]["pad_id"] = new_id[spec["padding"]["pad_token"]]
    _remap_post_processor(spec.get("post_processor"), new_id)

    # Rebuilding through the class (not AutoTokenizer on files) keeps its
    # settings (do_lower_case, special tokens, model_max_length); the old
    # vocab_file and added-token ids must not come along.
    kwargs = {
        k: v for k, v in tokenizer.init_kwargs.items()
        if k not in ("vocab", "vocab_file", "tokenizer_file", "added_tokens_decoder", "name_or_path")
    }
    pruned = type(tokenizer)(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), **kwargs)
    # Guard: some transformers 5 constructors rebuild the vocabulary from
    # their own arguments and silently drop the one given.
    if pruned.get_vocab() != new_id:
        raise RuntimeError(f"{type(tokenizer).__name__} did not take the pruned vocabulary")
    return pruned


def _remap_post_processor(node: dict | None, new_id: dict[str, int]) -> None:
    """Rewrite the token ids that a post-processor spec stores next to the
    tokens it adds (``[CLS]``/``[SEP]``), in place."""
    if not node:
        return
    kind = node["type"]
    if kind == "TemplateProcessing":
        for special in node["special_tokens"].values():
            special["ids"] = [new_id[t] for t in special["tokens"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        node["sep"] = [node["sep"][0], new_id[node["sep"][0]]]
        node["cls"] = [node["cls"][0], new_id[node["cls"][0]]]
    elif kind == "Sequence":
        for child in node["processors"]:
            _remap_post_processor(child, new_id)


def _pruned_model(model: nn.Module, keep: list[int]) -> nn.Module:
    """A copy of ``model`` whose vocabulary-sized matrices keep rows ``keep``."""
    model = copy.deepcopy(model)
    old = model.get_input_embeddings()
    rows = torch.tensor(keep, device=old.weight.device)
    remap = {old_id: rank for rank, old_id in enumerate(keep)}

    output = model.get_output_embeddings()
    tied = output is not None and output.weight is old.weight

    padding_idx = remap[old.padding_idx] if old.padding_idx is not None else None
    new = nn.Embedding(len(keep), old.embedding_dim, padding_idx=padding_idx, device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(old.weight[rows])
    model.set_input_embeddings(new)

    if output is not None:  # masked-LM head: logits over the vocabulary
        head = nn.Linear(
            output.in_features, len(keep), bias=output.bias is not None, device=rows.device, dtype=output.weight.dtype
        )
        with torch.no_grad():
            if output.bias is not None:
                head.bias.copy_(output.bias[rows])
            if tied:
                head.weight = new.weight
            else:
                head.weight.copy_(output.weight[rows])
        model.set_output_embeddings(head)

    model.config.vocab_size = len(keep)
    for key in _TOKEN_ID_KEYS:
        old_id = getattr(model.config, key, None)
        if isinstance(old_id, int):
            if old_id not in remap:
                raise ValueError(f"config.{key} = {old_id} is not in keep_ids")
            setattr(model.config, key, remap[old_id])
    return model


def pruning_report(before_model: nn.Module, after_model: nn.Module) -> dict:
    """Sizes before and after pruning: parameters (tied weights counted
    once), word-embedding rows, and float32 bytes (4 per parameter)."""

    def count(model):
        return sum(p.numel() for p in model.parameters())

    before, after = count(before_model), count(after_model)
    return {
        "parameters_before": before,
        "parameters_after": after,
        "embedding_rows_before": before_model.get_input_embeddings().num_embeddings,
        "embedding_rows_after": after_model.get_input_embeddings().num_embeddings,
        "fp32_bytes_before": 4 * before,
        "fp32_bytes_after": 4 * after,
        "fp32_bytes_saved": 4 * (before - after),
    }
