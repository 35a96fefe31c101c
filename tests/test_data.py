"""Composition, cleaning and splitting on small generated data."""
import numpy as np
import pytest

from conftest import make_url_rows, write_csv
from kd.data.splits import DataConfig, build_splits
from kd.data.sources import DataError
from kd.data.urls import registrable_domain


@pytest.fixture
def csv_path(tmp_path):
    return write_csv(tmp_path / "urls.csv", make_url_rows(400))


def config(path, **kw):
    return DataConfig(sources=[str(path)], data_dir=None, **kw)


def test_duplicates_and_conflicting_labels_are_dropped_and_counted(tmp_path):
    rows = make_url_rows(200)
    rows += [("HTTP://WWW." + rows[0][0][7:] + "/", rows[0][1])]  # same URL after normalisation
    rows += [(rows[2][0], "phishing" if rows[2][1] == "legitimate" else "legitimate")]  # both labels
    path = write_csv(tmp_path / "u.csv", rows)
    splits = build_splits(config(path))
    dropped = splits.report.dropped
    assert dropped["sources: duplicate"] == 1
    assert dropped["sources: both_labels"] == 2  # both copies of the conflicted URL
    everything = splits.train.urls + splits.validation.urls + splits.test.urls
    assert len(everything) == len(set(everything)) == 200 - 1


def test_domain_split_shares_no_domain_and_is_stratified(csv_path, tmp_path):
    rows = make_url_rows(400)
    # several URLs per domain, so grouping matters
    rows = [(f"http://shared{i % 40}.com/{u.split('/', 3)[-1]}{i}", y) for i, (u, y) in enumerate(rows)]
    path = write_csv(tmp_path / "g.csv", rows)
    splits = build_splits(config(path, split="domain"))
    domains = {name: {registrable_domain(u) for u in ex.urls} for name, ex in (("train", splits.train), ("validation", splits.validation), ("test", splits.test))}
    assert not domains["train"] & domains["validation"]
    assert not domains["train"] & domains["test"]
    assert not domains["validation"] & domains["test"]
    n = len(splits.train) + len(splits.validation) + len(splits.test)
    assert abs(len(splits.train) / n - 0.8) < 0.1
    for ex in (splits.train, splits.validation, splits.test):
        assert 0.3 < np.mean(ex.labels) < 0.7


def test_split_is_reproducible_and_seed_dependent(csv_path):
    a, b = build_splits(config(csv_path, seed=1)), build_splits(config(csv_path, seed=1))
    c = build_splits(config(csv_path, seed=2))
    assert a.test.urls == b.test.urls and a.train.urls == b.train.urls
    assert a.test.urls != c.test.urls


def test_random_split_fractions(csv_path):
    splits = build_splits(config(csv_path, split="random", fractions=[0.7, 0.15, 0.15]))
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (280, 60, 60)


def test_cross_dataset_test_set_drops_training_urls(csv_path, tmp_path):
    train_rows = make_url_rows(400)
    other = write_csv(tmp_path / "other.csv", [train_rows[0], ("http://fresh.org/a", "legitimate"), ("http://evil.biz/x", "phishing")])
    splits = build_splits(config(csv_path, test_sets={"other": [str(other)]}))
    in_train = train_rows[0][0].replace("http://", "") in splits.train.urls
    assert len(splits.test_sets["other"]) == (2 if in_train else 3)
    assert splits.report.dropped.get("other: in_training_split", 0) == int(in_train)
    assert "other" in splits.report.split_sizes


def test_empty_after_cleaning_is_an_error(tmp_path):
    path = write_csv(tmp_path / "c.csv", [("http://a.com", "phishing"), ("https://www.a.com/", "legitimate")])
    with pytest.raises(DataError, match="empty after cleaning"):
        build_splits(config(path))


def test_a_class_with_no_examples_is_an_error(tmp_path):
    path = write_csv(tmp_path / "c.csv", [(u, "phishing") for u, _ in make_url_rows(50)])
    with pytest.raises(DataError, match="no legitimate examples"):
        build_splits(config(path))


def test_bad_fractions_and_split_mode(csv_path):
    with pytest.raises(DataError, match="fractions"):
        config(csv_path, fractions=[0.9, 0.2, 0.1])
    with pytest.raises(DataError, match="domain' or 'random"):
        config(csv_path, split="time")


def test_report_counts_every_row(tmp_path):
    rows = make_url_rows(100) + [("", "phishing"), ("http://x.com/" + "y" * 5000, "phishing")]
    path = write_csv(tmp_path / "c.csv", rows)
    splits = build_splits(config(path))
    read = splits.report.reads[0]
    used = sum(s["n"] for s in splits.report.split_sizes.values())
    assert read.rows_read == 102 and dict(read.skipped) == {"empty_url": 1, "too_long": 1}
    assert read.rows_used - sum(splits.report.dropped.values()) == used
    assert "used 100" in splits.report.summary()
