"""Compose sources into one clean data set and split it reproducibly.

Pipeline: read every source (:mod:`kd.data.sources`) -> normalise URLs
(:func:`kd.data.urls.normalize_url`, on by default) -> drop exact duplicates ->
drop URLs seen with both labels -> split by registrable domain (default) or at
random, stratified and seeded -> optional extra test sets (cross-data-set
evaluation) with URLs already in training removed.

Every drop is counted in :class:`DataReport`, which the run log prints and
the checkpoint records.
"""
from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from kd.data.reader import Columns, open_input, read_rows
from kd.data.sources import DataError, ReadReport, SourceSpec, read_source
from kd.data.urls import normalize_url, registrable_domain
from models.encoder import LABEL_NAMES

SPLITS = ("train", "validation", "test")


@dataclass
class DataConfig:
    """What data a run uses and how it is cleaned and split."""

    sources: list = field(default_factory=lambda: ["hannousse/dataset_phishing.csv"])
    """Sources split into train / validation / test (strings ``PATH[:k=v,...]`` or dicts)."""
    test_sets: dict = field(default_factory=dict)
    """Extra test sets, name -> list of sources, scored whole (cross-data-set)."""
    data_dir: str | None = None
    """Folder that relative source paths resolve against (default: ``kd.data.paths.default_data_dir``)."""
    split: str = "domain"
    """``domain`` (no registrable domain in two splits) or ``random``."""
    fractions: list = field(default_factory=lambda: [0.8, 0.1, 0.1])
    """Train / validation / test fractions; test may be 0 when test_sets are given."""
    seed: int = 0
    normalize: bool = True
    max_url_chars: int = 2048
    """Longer URLs are skipped (and counted): real URLs stay far below this."""
    max_test_examples: int | None = None
    """Cap each extra test set at this many examples (stratified, seeded); None = all."""

    def __post_init__(self):
        if self.split not in ("domain", "random"):
            raise DataError(f"data.split must be 'domain' or 'random', not {self.split!r}")
        fractions = tuple(float(f) for f in self.fractions)
        if not all(math.isfinite(f) for f in fractions):
            raise DataError(f"data.fractions must be finite numbers: {self.fractions}")
        if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6 or fractions[0] == 0 or fractions[1] == 0:
            raise DataError(f"data.fractions must be 3 non-negative numbers summing to 1 with train, validation > 0: {self.fractions}")
        self.fractions = list(fractions)
        if not 0 <= self.seed < 2**32:
            raise DataError(f"data.seed must be in [0, 2**32) (NumPy's seed range), got {self.seed}")

    def resolve_data_dir(self) -> None:
        """Set an unset ``data_dir`` to :func:`kd.data.paths.default_data_dir` (so the
        saved config records the folder actually read)."""
        if self.data_dir is None:
            from kd.data.paths import default_data_dir

            found = default_data_dir()
            self.data_dir = str(found) if found else None

    def source_specs(self) -> list[SourceSpec]:
        return [SourceSpec.from_dict(s) for s in self.sources]

    def test_set_specs(self) -> dict[str, list[SourceSpec]]:
        return {name: [SourceSpec.from_dict(s) for s in specs] for name, specs in self.test_sets.items()}


@dataclass
class Examples:
    """A list of labelled URLs: ``urls[i]`` (normalised when configured), ``labels[i]`` in {0, 1}."""

    urls: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.urls)

    def class_counts(self) -> dict[str, int]:
        counts = Counter(self.labels)
        return {name: counts.get(i, 0) for i, name in enumerate(LABEL_NAMES)}

    def subset(self, indices) -> "Examples":
        return Examples([self.urls[i] for i in indices], [self.labels[i] for i in indices])


@dataclass
class DataReport:
    """Rows read, dropped (per reason) and used, for the run log and checkpoint."""

    reads: list[ReadReport] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)
    split_sizes: dict = field(default_factory=dict)
    source_hashes: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "sources": [
                {"source": r.source, "rows_read": r.rows_read, "rows_used": r.rows_used, "skipped": dict(r.skipped)}
                for r in self.reads
            ],
            "dropped": dict(self.dropped),
            "split_sizes": self.split_sizes,
            "source_hashes": self.source_hashes,
        }

    def summary(self) -> str:
        lines = []
        for r in self.reads:
            skipped = ", ".join(f"{k} {v}" for k, v in sorted(r.skipped.items())) or "none"
            lines.append(f"  {r.source}: read {r.rows_read}, skipped {skipped}, used {r.rows_used}")
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items())) or "none"
        lines.append(f"  after cleaning, dropped: {dropped}")
        for name, sizes in self.split_sizes.items():
            lines.append(f"  {name}: {sizes}")
        return "data:\n" + "\n".join(lines)


@dataclass
class DataSplits:
    """The splits of a run plus any extra test sets."""

    train: Examples
    validation: Examples
    test: Examples
    test_sets: dict[str, Examples]
    report: DataReport

    def all_sets(self) -> dict[str, Examples]:
        named = {"train": self.train, "validation": self.validation, "test": self.test}
        return {**{k: v for k, v in named.items() if len(v)}, **self.test_sets}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _resolve(spec: SourceSpec, data_dir: Path | None) -> Path | None:
    if spec.path.startswith("hf:"):
        return None
    path = Path(spec.path)
    return path if path.is_absolute() or data_dir is None else data_dir / path


def load_examples(specs: list[SourceSpec], cfg: DataConfig, report: DataReport, set_name: str) -> Examples:
    """Read, normalise and de-duplicate several sources into one :class:`Examples`.

    Duplicates (same normalised URL and label) keep their first copy; a URL
    seen with both labels is dropped entirely. Both are counted in ``report``.
    """
    data_dir = Path(cfg.data_dir) if cfg.data_dir else None
    rows: list[tuple[str, int]] = []
    for spec in specs:
        read_rows, read = read_source(spec, data_dir, max_url_chars=cfg.max_url_chars)
        read.source = f"{set_name}/{read.source}"
        report.reads.append(read)
        path = _resolve(spec, data_dir)
        if path is not None:
            report.source_hashes[spec.path] = file_sha256(path)
        for _, url, label in read_rows:
            url = normalize_url(url) if cfg.normalize else url
            if url:
                rows.append((url, label))
            else:
                report.dropped[f"{set_name}: empty_after_normalization"] += 1
    labels_of: dict[str, set[int]] = {}
    for url, label in rows:
        labels_of.setdefault(url, set()).add(label)
    by_url: dict[str, int] = {}
    for url, label in rows:
        if len(labels_of[url]) > 1:
            report.dropped[f"{set_name}: both_labels"] += 1
        elif url in by_url:
            report.dropped[f"{set_name}: duplicate"] += 1
        else:
            by_url[url] = label
    if not by_url:
        raise DataError(f"{set_name}: the data set is empty after cleaning\n{report.summary()}")
    return Examples(list(by_url), list(by_url.values()))


def _split_indices(examples: Examples, cfg: DataConfig) -> dict[str, np.ndarray]:
    """Stratified, seeded split indices; by registrable domain unless ``split=random``.

    The domain split uses ``StratifiedGroupKFold`` with 20 folds: whole folds go
    to validation and test (5 % each a fold), so no domain is in two splits.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    labels = np.asarray(examples.labels)
    n_folds = 20
    # sklearn's own minimum: a stratified group split needs n_folds members of each class.
    enough = min(np.bincount(labels, minlength=2)) if cfg.split == "domain" else len(labels)
    if enough < n_folds:
        need = "of each class" if cfg.split == "domain" else "in all"
        raise DataError(f"{len(labels)} examples after cleaning ({examples.class_counts()}) are too few for the "
                        f"{cfg.split} split, which deals them into {n_folds} folds: it needs at least {n_folds} {need}")
    if cfg.split == "domain":
        groups = np.asarray([registrable_domain(u) for u in examples.urls])
        folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=cfg.seed).split(labels, labels, groups)
    else:
        folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=cfg.seed).split(labels, labels)
    fold_of = np.empty(len(labels), dtype=np.int64)
    for k, (_, held) in enumerate(folds):
        fold_of[held] = k
    # Which folds go where: a seeded permutation so the seed moves every split.
    order = np.random.default_rng(cfg.seed).permutation(n_folds)
    n_val = max(1, round(cfg.fractions[1] * n_folds))
    n_test = round(cfg.fractions[2] * n_folds)
    val_folds, test_folds = order[:n_val], order[n_val : n_val + n_test]
    return {
        "train": np.flatnonzero(~np.isin(fold_of, np.concatenate([val_folds, test_folds]))),
        "validation": np.flatnonzero(np.isin(fold_of, val_folds)),
        "test": np.flatnonzero(np.isin(fold_of, test_folds)),
    }


def _sample(examples: Examples, limit: int | None, seed: int) -> Examples:
    if limit is None or len(examples) <= limit:
        return examples
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(
        np.arange(len(examples)), train_size=limit, stratify=examples.labels, random_state=seed
    )
    return examples.subset(sorted(keep))


def build_splits(cfg: DataConfig) -> DataSplits:
    """Read, clean and split the configured data; raise :class:`DataError` on bad input."""
    cfg.resolve_data_dir()
    report = DataReport()
    examples = load_examples(cfg.source_specs(), cfg, report, "sources")
    for label, count in examples.class_counts().items():
        if count == 0:
            raise DataError(
                f"the training sources hold no {label} examples after cleaning; a classifier needs both classes "
                f"(add a source with label={label}).\n{report.summary()}"
            )
    index = _split_indices(examples, cfg)
    splits = {name: examples.subset(index[name]) for name in SPLITS}
    for name in ("train", "validation"):
        for label, count in splits[name].class_counts().items():
            if count == 0:
                raise DataError(f"the {name} split has no {label} examples: use more data or other fractions")
    train_urls = set(splits["train"].urls)
    test_sets = {}
    for name, specs in cfg.test_set_specs().items():
        extra = load_examples(specs, cfg, report, name)
        keep = [i for i, u in enumerate(extra.urls) if u not in train_urls]
        if len(keep) < len(extra):
            report.dropped[f"{name}: in_training_split"] += len(extra) - len(keep)
        test_sets[name] = _sample(extra.subset(keep), cfg.max_test_examples, cfg.seed)
        if len(test_sets[name]) < len(keep):
            report.dropped[f"{name}: sampled_out (max_test_examples)"] += len(keep) - len(test_sets[name])
    out = DataSplits(splits["train"], splits["validation"], splits["test"], test_sets, report)
    report.split_sizes = {name: {"n": len(ex), **ex.class_counts()} for name, ex in out.all_sets().items()}
    return out


def write_split_file(splits: DataSplits, path: Path) -> None:
    """Record every example's split as CSV (``split,label,url``) so a run's data
    can be reproduced and audited exactly."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["split", "label", "url"])
        for name, ex in splits.all_sets().items():
            writer.writerows((name, label, url) for url, label in zip(ex.urls, ex.labels))


def read_split_file(path: Path) -> Iterator[tuple[str, int, str]]:
    """``(split, label, url)`` of every row of a file :func:`write_split_file` wrote,
    in its order, read by :func:`kd.data.reader.read_rows`. A row that does not
    read is a :class:`DataError` naming its line: the file is the project's own."""
    with open_input(path) as (lines, _):
        for row in read_rows(lines, "csv", Columns(url="url", extra=("split", "label")), where=path):
            if row.url is None or None in row.extra:
                raise DataError(f"{path}, line {row.line}: {row.reason or 'a split or label cell is missing'}")
            split, label = row.extra
            yield split, int(label), row.url

