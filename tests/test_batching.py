import numpy as np
import pytest

from kd.data.batching import TokenizedSet, collate, eval_batches, length_bucketed_batches, padding_fraction, split_batch


def test_batches_cover_every_example_once_and_are_deterministic():
    lengths = np.random.default_rng(0).integers(3, 100, size=1000)
    a = length_bucketed_batches(lengths, 32, seed=1, epoch=0)
    assert sorted(np.concatenate(a).tolist()) == list(range(1000))
    assert all((x == y).all() for x, y in zip(a, length_bucketed_batches(lengths, 32, seed=1, epoch=0)))
    other_epoch = length_bucketed_batches(lengths, 32, seed=1, epoch=1)
    assert any(len(x) != len(y) or (x != y).any() for x, y in zip(a, other_epoch))


def test_bucketing_cuts_padding():
    lengths = np.random.default_rng(0).lognormal(3, 0.6, size=4000).astype(int) + 3
    bucketed = length_bucketed_batches(lengths, 32, seed=0, epoch=0)
    random_batches = np.array_split(np.random.default_rng(0).permutation(4000), 125)
    assert padding_fraction(lengths, bucketed) < 0.1 < padding_fraction(lengths, random_batches)


def test_ranks_split_each_global_batch_into_disjoint_micro_batches():
    lengths = np.arange(1, 1001)
    batches = length_bucketed_batches(lengths, 12, seed=0, epoch=0, min_size=6)
    assert len(batches) == 83 and all(len(b) == 12 for b in batches)  # the last 4 examples cannot feed 6 micro-batches
    for batch in batches:
        parts = split_batch(batch, world_size=3, grad_accum=2)
        assert [len(p) for p in parts] == [2] * 6 and (np.concatenate(parts) == batch).all()
    uneven = split_batch(np.arange(7), world_size=2, grad_accum=2)
    assert [p.tolist() for p in uneven] == [[0, 1], [2, 3], [4, 5], [6]]


def test_collate_pads_to_the_longest_member_only():
    data = TokenizedSet([[101, 5, 102], [101, 5, 6, 7, 102], [101, 102]], np.array([0, 1, 1]), pad_token_id=0)
    batch = collate(data, [0, 2])
    assert batch["input_ids"].tolist() == [[101, 5, 102], [101, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [0, 1] and batch["index"].tolist() == [0, 2] and int(batch["n_items"]) == 2


def test_eval_batches_are_sorted_and_complete():
    lengths = np.array([5, 1, 9, 3])
    batches = eval_batches(lengths, 3)
    assert [b.tolist() for b in batches] == [[2, 0, 3], [1]]


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError):
        length_bucketed_batches(np.arange(5), 0, seed=0, epoch=0)
