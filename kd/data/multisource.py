"""Several named sources in one data set, split once by registrable domain.

A *source* is a name and a list of :class:`~kd.data.sources.SourceSpec`
(e.g. ``iscx_phishtank`` = the ISCX benign list + PhishTank). Each source is
read and cleaned by :func:`kd.data.splits.load_examples` (normalisation,
duplicates, URLs with both labels, all counted in one
:class:`~kd.data.splits.DataReport`). Then, across sources:

- a URL already taken by an earlier source (config order) is dropped from the
  later one (``duplicate_across_sources``), or from both if the labels differ
  (``both_labels_across_sources``);
- every registrable domain goes to one split, whatever source it came from:
  split of domain ``d`` = where ``u(d) = blake2b(f"{seed}:{d}") / 2**64`` falls
  in the cumulative fractions. Hashing (not a fold search) keeps the split of
  a domain stable when sources are added or capped;
- caps are applied *after* the split, per split, source and class: a seeded
  uniform sample of ``cap`` URLs (rule: :func:`cap_indices`), so one source
  cannot swamp the others and test sets may stay whole while training is capped.

Every example keeps its source's name, and dated sources (JPCERT) their date
and brand (:func:`read_metadata`).
"""
from __future__ import annotations

import hashlib
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kd.data.reader import Columns, open_input, read_rows
from kd.data.sources import DataError, SourceSpec
from kd.data.splits import SPLITS, DataConfig, DataReport, load_examples
from kd.data.urls import normalize_url, registrable_domain
from models.encoder import LABEL_NAMES


@dataclass
class SourceSet:
    """Labelled URLs with their source: ``urls[i]``, ``labels[i]`` in {0, 1},
    ``sources[i]`` (a source name), ``dates[i]`` (``YYYY-MM-DD`` or ``""``)
    and ``brands[i]`` (the spoofed brand or ``""``)."""

    urls: list[str]
    labels: list[int]
    sources: list[str]
    dates: list[str] = field(default_factory=list)
    brands: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.dates = self.dates or [""] * len(self.urls)
        self.brands = self.brands or [""] * len(self.urls)

    def __len__(self) -> int:
        return len(self.urls)

    def subset(self, indices) -> "SourceSet":
        pick = lambda values: [values[i] for i in indices]  # noqa: E731
        return SourceSet(pick(self.urls), pick(self.labels), pick(self.sources), pick(self.dates), pick(self.brands))

    def where(self, keep) -> "SourceSet":
        """The examples for which ``keep(i)`` is true, in order."""
        return self.subset([i for i in range(len(self)) if keep(i)])

    def domains(self) -> list[str]:
        return [registrable_domain(u) for u in self.urls]

    def sizes(self) -> dict[str, dict[str, int]]:
        """``{source: {legitimate: n, phishing: n}}``."""
        counts = Counter(zip(self.sources, self.labels))
        return {s: {name: counts.get((s, i), 0) for i, name in enumerate(LABEL_NAMES)} for s in dict.fromkeys(self.sources)}

    @staticmethod
    def concat(parts: list["SourceSet"]) -> "SourceSet":
        return SourceSet(*(sum((getattr(p, f) for p in parts), []) for f in ("urls", "labels", "sources", "dates", "brands")))


def read_metadata(path: Path, columns: tuple[str, str] = ("date", "brand"), normalize: bool = True) -> dict[str, tuple[str, str]]:
    """``{url: (date, brand)}`` from a CSV with a ``url`` column and ``columns``,
    read row for row as the URLs themselves are (:func:`kd.data.reader.read_rows`);
    the first row of a URL wins (JPCERT's file is in date order, so its first
    report). Dates ``2019/01/04 10:12:00`` become ``2019-01-04``; a row without
    the cells gives no metadata."""
    out: dict[str, tuple[str, str]] = {}
    with open_input(path) as (lines, _):
        for row in read_rows(lines, "csv", Columns(url="url", extra=columns), where=path):
            if row.url is None or None in row.extra:
                continue
            url = normalize_url(row.url.strip()) if normalize else row.url.strip()
            date, brand = (_text(cell).strip() for cell in row.extra)
            if url and url not in out:
                out[url] = (date[:10].replace("/", "-"), brand)
    return out


def _text(cell: str) -> str:
    """A cell as text that can be written back as UTF-8: undecodable bytes (kept as
    surrogates by the reader) become U+FFFD."""
    return cell.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")


def read_multisource(
    sources: dict[str, list], cfg: DataConfig, report: DataReport, dated: dict[str, str] | None = None
) -> SourceSet:
    """Read every named source (``name -> [SourceSpec or str, ...]``) and join
    them, dropping URLs already taken by an earlier source (counted in
    ``report.dropped``). ``dated`` names sources whose file (a path relative to
    ``cfg.data_dir``) gives each URL a date and brand (:func:`read_metadata`)."""
    cfg.resolve_data_dir()
    data_dir = Path(cfg.data_dir) if cfg.data_dir else None
    parts, label_of, source_of = [], {}, {}
    for name, specs in sources.items():
        examples = load_examples([SourceSpec.from_dict(s) for s in specs], cfg, report, name)
        meta = {}
        if dated and name in dated:
            path = Path(dated[name])
            meta = read_metadata(path if path.is_absolute() or data_dir is None else data_dir / path, normalize=cfg.normalize)
        for url, label in zip(examples.urls, examples.labels):
            if url in label_of:
                reason = "duplicate_across_sources" if label_of[url] == label else "both_labels_across_sources"
                report.dropped[f"{name}: {reason}"] += 1
                if reason == "both_labels_across_sources":
                    label_of[url] = None  # dropped from the earlier source too, below
                continue
            label_of[url], source_of[url] = label, name
        parts.append((name, examples, meta))
    out = SourceSet([], [], [])
    for name, examples, meta in parts:
        for url, label in zip(examples.urls, examples.labels):
            if source_of.get(url) != name:
                continue
            if label_of[url] is None:
                report.dropped[f"{name}: both_labels_across_sources"] += 1
                continue
            date, brand = meta.get(url, ("", ""))
            out.urls.append(url), out.labels.append(label), out.sources.append(name)
            out.dates.append(date), out.brands.append(brand)
    return out


def domain_split(domains: list[str], fractions, seed: int) -> np.ndarray:
    """``(N,)`` split index (0 train, 1 validation, 2 test) of each example: its
    registrable domain's hash ``u`` in [0, 1) against the cumulative fractions,
    so every domain lies in exactly one split."""
    edges = np.cumsum(fractions)[:-1]
    cache: dict[str, int] = {}
    out = np.empty(len(domains), dtype=np.int64)
    for i, domain in enumerate(domains):
        if domain not in cache:
            digest = hashlib.blake2b(f"{seed}:{domain}".encode(), digest_size=8).digest()
            cache[domain] = int(np.searchsorted(edges, int.from_bytes(digest, "big") / 2**64, side="right"))
        out[i] = cache[domain]
    return out


def cap_indices(data: SourceSet, cap: int | None, seed: int) -> list[int]:
    """At most ``cap`` examples per (source, class), in data order: for each pair,
    a uniform sample without replacement drawn by
    ``numpy.random.default_rng([seed, crc32(source), label])`` (so one source's
    sample does not move when another is added). ``None`` keeps everything."""
    if cap is None:
        return list(range(len(data)))
    groups: dict[tuple[str, int], list[int]] = {}
    for i, key in enumerate(zip(data.sources, data.labels)):
        groups.setdefault(key, []).append(i)
    keep = []
    for (source, label), members in groups.items():
        if len(members) > cap:
            rng = np.random.default_rng([seed, zlib.crc32(source.encode()), label])
            members = rng.choice(members, size=cap, replace=False).tolist()
        keep.extend(members)
    return sorted(keep)


def split_multisource(data: SourceSet, fractions, seed: int, caps: dict[str, int | None]) -> dict[str, SourceSet]:
    """``{train, validation, test}`` of ``data`` by :func:`domain_split`, each
    capped per (source, class) at ``caps[split]`` by :func:`cap_indices`."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise DataError(f"fractions must be 3 non-negative numbers summing to 1: {fractions}")
    which = domain_split(data.domains(), fractions, seed)
    out = {}
    for k, name in enumerate(SPLITS):
        part = data.subset(np.flatnonzero(which == k).tolist())
        out[name] = part.subset(cap_indices(part, caps.get(name), seed))
    return out
