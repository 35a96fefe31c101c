"""Paired comparisons of seeded runs from their per-URL scores (kd.eval.compare, kd.eval.scoring.write_scores)."""
import json

import numpy as np
import pytest

from kd.data.batching import TokenizedSet
from kd.eval.compare import compare_groups
from kd.eval.scoring import SCORES_FILE, read_scores, write_scores


def fake_run(folder, urls, labels, probs, threshold=0.5, sets=("validation", "test")):
    folder.mkdir(parents=True)
    data = TokenizedSet([[1]] * len(urls), np.asarray(labels), 0, list(urls))
    write_scores({name: (data, np.asarray(probs)) for name in sets}, folder / SCORES_FILE)
    (folder / "results.json").write_text(json.dumps({"threshold": threshold}))
    return folder


def planted(seed, n_domains=300):
    rng = np.random.default_rng(seed)
    urls = [f"http://www.site{d}.com/page{k}" for d in range(n_domains) for k in range(3)]
    labels = np.repeat(rng.integers(0, 2, n_domains), 3)
    return urls, labels, rng


def test_scores_round_trip_and_sets_without_urls_are_left_out(tmp_path):
    data = TokenizedSet([[1], [2]], np.array([0, 1]), 0, ["a.com/x", "b.com/=1,\"q\""])
    write_scores({"test": (data, np.array([0.25, 0.75])), "ids-only": (TokenizedSet([[1]], np.array([1]), 0), np.array([0.5]))},
                 tmp_path / SCORES_FILE)
    back = read_scores(tmp_path / SCORES_FILE)
    assert list(back) == ["test"] and back["test"]["urls"] == data.urls
    assert back["test"]["labels"].tolist() == [0, 1] and back["test"]["probs"].tolist() == [0.25, 0.75]
    assert [p.name for p in tmp_path.iterdir()] == [SCORES_FILE]  # no temporary left


def test_a_better_group_is_significant_and_an_equal_one_is_not(tmp_path):
    urls, labels, rng = planted(0)
    base = labels + rng.normal(0, 1.0, len(labels))
    reference = [fake_run(tmp_path / f"ce{s}", urls, labels, 1 / (1 + np.exp(-(base + rng.normal(0, 0.2, len(labels)))))) for s in range(3)]
    better = [fake_run(tmp_path / f"kd{s}", urls, labels, 1 / (1 + np.exp(-(base + labels * 1.5 + rng.normal(0, 0.2, len(labels)))))) for s in range(3)]
    same = [fake_run(tmp_path / f"eq{s}", urls, labels, 1 / (1 + np.exp(-(base + rng.normal(0, 0.2, len(labels)))))) for s in range(3)]
    rows = {r["metric"]: r for r in compare_groups(reference, better, n_boot=200)}
    assert set(rows) == {"roc_auc", "f1"} and all(r["set"] == "test" for r in rows.values())  # validation chose thresholds
    assert rows["roc_auc"]["significant"] and rows["roc_auc"]["difference"] > 0 and rows["roc_auc"]["p_value"] < 0.01
    assert rows["roc_auc"]["n_domains"] == 300 and rows["roc_auc"]["runs"] == 3
    null = {r["metric"]: r for r in compare_groups(reference, same, n_boot=200)}
    assert not null["roc_auc"]["significant"] and null["roc_auc"]["mdd"] > abs(null["roc_auc"]["difference"])


def test_f1_uses_each_runs_own_threshold(tmp_path):
    urls, labels, _ = planted(1, n_domains=50)
    probs = np.where(labels == 1, 0.3, 0.1)  # separable at 0.2, not at 0.5
    at_half = fake_run(tmp_path / "a", urls, labels, probs, threshold=0.5)
    tuned = fake_run(tmp_path / "b", urls, labels, probs, threshold=0.2)
    f1 = next(r for r in compare_groups([at_half], [tuned], n_boot=20) if r["metric"] == "f1")
    assert f1["reference"] == 0.0 and f1["value"] == 1.0


def test_runs_on_different_urls_or_without_scores_are_refused(tmp_path):
    urls, labels, _ = planted(2, n_domains=20)
    a = fake_run(tmp_path / "a", urls, labels, np.full(len(urls), 0.5))
    b = fake_run(tmp_path / "b", urls[::-1], labels, np.full(len(urls), 0.5))
    with pytest.raises(ValueError, match="different URLs"):
        compare_groups([a], [b], n_boot=10)
    (tmp_path / "old").mkdir()
    with pytest.raises(FileNotFoundError, match="train it again"):
        compare_groups([a], [tmp_path / "old"], n_boot=10)
    with pytest.raises(ValueError, match="same number"):
        compare_groups([a], [a, b], n_boot=10)


def test_an_ablation_row_reads_the_named_test_set_and_refuses_a_missing_one(tmp_path):
    from kd.ablation import Cell, cell_row
    from kd.errors import UsageError

    metrics = {"f1": 0.9, "roc_auc": 0.95, "tpr_at_1pct_fpr": 0.5, "accuracy": 0.92}
    results = {"sets": {"validation": metrics, "esdaung": {**metrics, "f1": 0.8}}, "train_seconds": 1.0,
               "total_parameters": 10, "trainable_parameters": 5}
    (tmp_path / "results.json").write_text(json.dumps(results))
    cell = Cell("ce|L3", 0, ())
    assert cell_row(cell, tmp_path, None, "esdaung")["f1"] == 0.8
    with pytest.raises(UsageError, match="test_set:"):
        cell_row(cell, tmp_path, None)


def test_scores_that_fail_halfway_leave_the_old_file_and_no_temporary(tmp_path):
    data = TokenizedSet([[1], [2]], np.array([0, 1]), 0, ["a.com", "b.com"])
    write_scores({"test": (data, np.array([0.25, 0.75]))}, tmp_path / SCORES_FILE)
    before = (tmp_path / SCORES_FILE).read_bytes()
    with pytest.raises(TypeError):
        write_scores({"test": (data, np.array([0.5, None], dtype=object))}, tmp_path / SCORES_FILE)
    assert (tmp_path / SCORES_FILE).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [SCORES_FILE]
