"""Tokenised URL sets and length-bucketed batches with per-batch padding.

URLs are short, with a long tail (lengths: benchmarks/notes.md), so padding
every batch to ``max_length`` would spend most of the compute on padding.
Batches are drawn from length-sorted "mega-batches" of shuffled examples and
padded only to their own longest member.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from kd.data.splits import DataConfig, DataSplits, Examples, build_splits


@dataclass
class TokenizedSet:
    """Token ids of one split: ``input_ids[i]`` is a list of ints (with special
    tokens, truncated to ``max_length``); ``labels[i]`` in {0, 1}.

    ``index[i]`` is the example's position in its split, the identity that
    teacher-logit caches key on (never the step number). ``urls[i]`` is the
    normalised URL the ids came from (None for sets built from ids alone), for
    the per-URL scores the final evaluation writes.
    """

    input_ids: list[list[int]]
    labels: np.ndarray
    pad_token_id: int
    urls: list[str] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    @cached_property
    def lengths(self) -> np.ndarray:
        """``(N,)`` token count of each example, computed once (the loop reads it every step)."""
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self.input_ids))


def tokenize(examples: Examples, tokenizer, max_length: int = 128) -> TokenizedSet:
    """Tokenise all URLs once (fast tokenizer, batched); no padding here."""
    if max_length < 8:
        raise ValueError(f"max_length must be at least 8, got {max_length}")
    ids = tokenizer(list(examples.urls), truncation=True, max_length=max_length)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return TokenizedSet(ids, np.asarray(examples.labels, dtype=np.int64), pad, list(examples.urls))


def prepare_data(data_cfg: DataConfig, tokenizer, max_length: int, log=print) -> tuple[DataSplits, dict[str, TokenizedSet]]:
    """Build the splits and tokenise every set once."""
    splits = build_splits(data_cfg)
    log(splits.report.summary())
    tokenized = {name: tokenize(ex, tokenizer, max_length) for name, ex in splits.all_sets().items()}
    return splits, tokenized


def collate(data: TokenizedSet, indices, *, labels: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """Pad the examples ``indices`` to their longest member.

    Returns ``input_ids`` and ``attention_mask`` ``(B, T)``, ``labels`` ``(B,)``
    (-100 marks an unlabelled example), ``index`` ``(B,)`` and ``n_items``, the
    number of examples that count in the loss normalisation (here B).
    """
    indices = np.asarray(indices, dtype=np.int64)
    rows = [data.input_ids[i] for i in indices]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), data.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        input_ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[b, : len(row)] = 1
    source = data.labels if labels is None else labels
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": torch.from_numpy(source[indices]),
        "index": torch.from_numpy(indices),
        "n_items": torch.tensor(len(rows)),
    }


def length_bucketed_batches(
    lengths: np.ndarray,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    bucket_factor: int = 50,
    min_size: int = 1,
) -> list[np.ndarray]:
    """One epoch's batches of example indices, deterministic in (seed, epoch).

    Shuffle all examples, cut them into mega-batches of ``bucket_factor *
    batch_size``, sort each by length and cut it into batches, then shuffle the
    batch order. The last, partial batch is dropped if it holds fewer than
    ``min_size`` examples (the training loop needs one per micro-batch).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    mega = batch_size * bucket_factor
    batches = []
    for start in range(0, len(order), mega):
        chunk = order[start : start + mega]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    batches = [batches[i] for i in rng.permutation(len(batches))]
    return [b for b in batches if len(b) >= min_size]


def split_batch(batch: np.ndarray, world_size: int, grad_accum: int) -> list[np.ndarray]:
    """One optimizer step's global ``batch`` as ``world_size * grad_accum``
    micro-batches of consecutive examples (sizes differ by at most 1); rank
    ``r`` runs parts ``r * grad_accum`` to ``(r + 1) * grad_accum - 1``.

    Every rank cuts the same batch list, so the examples of a step do not
    depend on the number of ranks or micro-batches.
    """
    return np.array_split(batch, world_size * grad_accum)


def eval_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Deterministic length-sorted batches for evaluation (no shuffling)."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def windows(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of ``size`` items of ``items`` (the last may be shorter),
    drawn lazily: a stream is never read more than one window ahead."""
    if size < 1:
        raise ValueError(f"a window holds at least 1 item, got {size}")
    iterator = iter(items)
    while window := list(itertools.islice(iterator, size)):
        yield window


def token_counts(lengths: np.ndarray, batches: list[np.ndarray]) -> tuple[int, int]:
    """``(real tokens, computed positions)`` of the batches, each padded to its longest member."""
    real = sum(int(lengths[b].sum()) for b in batches)
    computed = sum(int(lengths[b].max()) * len(b) for b in batches)
    return real, computed


def padding_fraction(lengths: np.ndarray, batches: list[np.ndarray]) -> float:
    """Share of padded positions over all positions the batches compute."""
    real, computed = token_counts(lengths, batches)
    return 1.0 - real / computed if computed else 0.0
