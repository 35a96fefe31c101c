"""Vocabulary pruning: keep only the embedding rows of the tokens that the
training URLs use (:func:`token_ids_in`, :func:`prune_vocabulary`).

The word-embedding matrix ``(V, H)`` is a large share of a small encoder's
parameters, and URLs use a fraction of a WordPiece vocabulary; the sizes
measured on the project's data are in docs/student.md ("The student").
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from models.paths import record_tokenizer

_TOKEN_ID_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id")
"""Config fields that hold a token id and must follow the pruned vocabulary."""


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
    """Keep only the vocabulary entries ``keep_ids`` (and the ids up to the padding
    id, which keeps its value); return ``(model, tokenizer)``.

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
    # RoBERTa and MPNet number positions from the padding id (MPNet's code fixes
    # it at 1): the ids up to it are kept, so that it keeps its value.
    pads = [i for i in (tokenizer.pad_token_id, model.get_input_embeddings().padding_idx) if i is not None]
    keep = sorted(set(int(i) for i in keep_ids) | set(range(max(pads, default=-1) + 1)))
    tokenizer = _pruned_tokenizer(tokenizer, keep)
    model = _pruned_model(model, keep)
    record_tokenizer(model, tokenizer)
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
