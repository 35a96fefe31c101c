"""Readers for labelled URL files: one function per format, one spec type.

Every reader yields ``(line, url, label)`` and counts what it skips, so that
nothing is lost silently: a row is either used, skipped for a named reason
(counted in :class:`ReadReport`), or the read fails with an error that names
the file, the line and what was expected.

Labels are integers: 0 = legitimate, 1 = phishing.
"""
from __future__ import annotations

import csv
import json
import math
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

LEGITIMATE, PHISHING = 0, 1
LABEL_NAMES = ("legitimate", "phishing")

LABEL_VALUES = {
    **dict.fromkeys(("0", "legitimate", "legit", "benign", "good", "safe", "clean", "false", "no", "ham"), LEGITIMATE),
    **dict.fromkeys(("1", "phishing", "phish", "malicious", "bad", "true", "yes", "spam"), PHISHING),
}
"""Accepted label spellings (case-insensitive); ``0.0``/``1.0`` are accepted too."""

URL_COLUMNS = ("url", "urls", "uri", "link", "website", "address")
LABEL_COLUMNS = ("label", "labels", "status", "class", "type", "target", "is_phishing", "phishing", "result")
FORMATS = ("auto", "hannousse", "phishtank", "lines", "csv", "json", "jsonl", "parquet", "hf")

SKIP_REASONS = {
    "empty_url": "the URL cell is empty, blank or NaN",
    "invalid_utf8": "the row is not valid UTF-8",
    "too_long": "the URL is longer than max_url_chars",
    "missing_label": "the label cell is empty or NaN",
}
"""Why a row may be skipped while reading (all counted and reported)."""


class DataError(ValueError):
    """Bad input data: the message names the file, the row and what was expected."""


@dataclass(frozen=True)
class SourceSpec:
    """One labelled URL file and how to read it.

    ``path`` is a file (relative paths resolve against the data folder) or
    ``hf:OWNER/NAME`` for a Hugging Face hub dataset. ``label`` fixes the label
    of every row (files that hold one class, e.g. the ISCX lists or PhishTank);
    otherwise the label comes from ``label_column``.
    """

    path: str
    format: str = "auto"
    label: str | None = None
    url_column: str | None = None
    label_column: str | None = None
    name: str | None = None

    def __post_init__(self):
        if self.format not in FORMATS:
            raise DataError(f"unknown format {self.format!r} for {self.path}; known: {', '.join(FORMATS)}")
        if self.label is not None:
            parse_label(self.label, where=f"the label given for {self.path}")

    @property
    def display_name(self) -> str:
        return self.name or Path(self.path).stem

    @classmethod
    def parse(cls, text: str) -> "SourceSpec":
        """Parse ``PATH`` or ``PATH:key=value,key=value`` (keys: the fields).

        >>> SourceSpec.parse("iscx/benign.csv:format=lines,label=legitimate").label
        'legitimate'
        """
        path, options = text, {}
        head, sep, tail = text.rpartition(":")
        if sep and "=" in tail and "/" not in tail:
            path = head
            for item in tail.split(","):
                key, eq, value = item.partition("=")
                if not eq:
                    raise DataError(f"source option {item!r} in {text!r} is not key=value")
                options[key.strip()] = value.strip()
        return cls.from_dict({"path": path, **options})

    @classmethod
    def from_dict(cls, raw: dict | str) -> "SourceSpec":
        if isinstance(raw, str):
            return cls.parse(raw)
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise DataError(f"unknown source option(s) {sorted(unknown)}; known: {sorted(known)}")
        if "path" not in raw:
            raise DataError(f"a source needs a path: {raw}")
        return cls(**{k: (str(v) if v is not None else None) for k, v in raw.items()})


@dataclass
class ReadReport:
    """What reading one source did: rows read, used, and skipped per reason."""

    source: str
    rows_read: int = 0
    skipped: Counter = field(default_factory=Counter)

    @property
    def rows_used(self) -> int:
        return self.rows_read - sum(self.skipped.values())


def parse_label(value, *, where: str) -> int:
    """Map a label cell to 0/1, or raise :class:`DataError` naming ``where``."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value in (0, 1):
            return int(value)
    text = str(value).strip().lower()
    if text in ("0.0", "1.0"):
        text = text[0]
    if text in LABEL_VALUES:
        return LABEL_VALUES[text]
    raise DataError(
        f"{where}: unknown label value {value!r}; expected one of "
        f"{sorted(k for k, v in LABEL_VALUES.items() if v == 0)} (legitimate) or "
        f"{sorted(k for k, v in LABEL_VALUES.items() if v == 1)} (phishing)"
    )


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def _has_bad_bytes(text: str) -> bool:
    # Reading with errors="surrogateescape" maps each invalid byte to U+DC80..U+DCFF.
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _pick_column(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, path) -> str:
    by_lower = {c.strip().lower(): c for c in columns}
    if wanted is not None:
        if wanted in columns:
            return wanted
        if wanted.lower() in by_lower:
            return by_lower[wanted.lower()]
        raise DataError(f"{path}: no {what} column {wanted!r}; columns are {columns}")
    for name in candidates:
        if name in by_lower:
            return by_lower[name]
    raise DataError(
        f"{path}: no {what} column; looked for {list(candidates)} among {columns} "
        f"(name it with {what}_column=...)"
    )


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            yield number, raw.rstrip(b"\r\n").decode("utf-8", errors="surrogateescape")


def _read_csv(path: Path, spec: SourceSpec, need_label: bool) -> Iterator[tuple[int, object, object]]:
    csv.field_size_limit(min(2**31 - 1, 2**62))
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: the file is empty (expected a header row)")
        url_col = header.index(_pick_column(header, spec.url_column, URL_COLUMNS, "url", path))
        label_col = None
        if need_label:
            label_col = header.index(_pick_column(header, spec.label_column, LABEL_COLUMNS, "label", path))
        for row in reader:
            line = reader.line_num
            if not row:
                continue
            url = row[url_col] if url_col < len(row) else None
            label = row[label_col] if label_col is not None and label_col < len(row) else None
            yield line, url, label


def _read_records(records: list, spec: SourceSpec, need_label: bool, where) -> Iterator[tuple[int, object, object]]:
    """JSON-like records: a list of URL strings, or of objects with url/label keys."""
    url_key = label_key = None
    for index, record in enumerate(records, start=1):
        if isinstance(record, str):
            if need_label:
                raise DataError(f"{where}: item {index} is a bare URL, so the source needs label=...")
            yield index, record, None
            continue
        if not isinstance(record, dict):
            raise DataError(f"{where}: item {index} is {type(record).__name__}, expected a URL string or an object")
        if url_key is None:
            url_key = _pick_column(list(record), spec.url_column, URL_COLUMNS, "url", where)
            if need_label:
                label_key = _pick_column(list(record), spec.label_column, LABEL_COLUMNS, "label", where)
        yield index, record.get(url_key), record.get(label_key) if label_key else None


def _read_hub(spec: SourceSpec, need_label: bool):
    from kd.paths import HUB_DATASET

    name = spec.path[3:]
    offline = any(os.environ.get(v, "") not in ("", "0") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    hint = (
        f"download it once and point the source at a local copy instead, e.g. the Hannousse CSV "
        f"(../shared/data/hannousse/dataset_phishing.csv is the same data as {HUB_DATASET})"
    )
    if offline:
        raise DataError(f"hub dataset {name!r} cannot be loaded: the Hugging Face hub is offline; {hint}")
    try:
        import datasets

        table = datasets.load_dataset(name, split="train+test" if name == HUB_DATASET else "train")
    except Exception as err:  # any network or hub error ends the same way for the user
        raise DataError(f"hub dataset {name!r} could not be loaded ({type(err).__name__}: {err}); {hint}") from err
    return _read_records(table.to_list(), spec, need_label, f"hf:{name}")


def _detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".json", ".jsonl", ".parquet"):
        return suffix[1:]
    if suffix in (".txt", ".lst", ".list"):
        return "lines"
    with open(path, "rb") as handle:
        first = handle.readline(4096).decode("utf-8", errors="replace").strip().lower()
    if first.startswith("phish_id,"):
        return "phishtank"
    if first.startswith("url,") and ",status" in first:
        return "hannousse"
    if "," not in first or "://" in first.split(",")[0]:
        return "lines"  # no header row: one URL a line (the ISCX lists)
    return "csv"


def read_source(
    spec: SourceSpec, data_dir: Path | None = None, *, max_url_chars: int = 2048
) -> tuple[list[tuple[int, str, int]], ReadReport]:
    """Read one source into ``[(line, raw_url, label), ...]`` and its report.

    ``line`` is the 1-based line (CSV / text) or item (JSON, parquet) number.
    Raises :class:`DataError` for a missing file or column, an unknown label
    value, or a source that yields no usable rows.
    """
    fixed_label = None if spec.label is None else parse_label(spec.label, where=spec.path)
    need_label = fixed_label is None
    report = ReadReport(spec.display_name)
    if spec.path.startswith("hf:") or spec.format == "hf":
        rows = _read_hub(spec, need_label)
        where = spec.path
    else:
        path = Path(spec.path)
        if not path.is_absolute() and data_dir is not None:
            path = Path(data_dir) / path
        if not path.is_file():
            raise DataError(f"source file not found: {path}" + ("" if path.parent.is_dir() else f" (no folder {path.parent})"))
        where = str(path)
        fmt = _detect_format(path) if spec.format == "auto" else spec.format
        if fmt == "lines":
            if need_label:
                raise DataError(f"{path}: a one-URL-per-line file holds no labels; give label=phishing or label=legitimate")
            rows = ((n, text, None) for n, text in _read_lines(path))
        elif fmt in ("csv", "hannousse", "phishtank"):
            if fmt == "phishtank" and need_label:
                fixed_label, need_label = PHISHING, False  # PhishTank lists verified phishing only
            rows = _read_csv(path, spec, need_label)
        elif fmt == "json":
            with open(path, encoding="utf-8", errors="surrogateescape") as handle:
                try:
                    payload = json.load(handle)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}: not valid JSON ({err})") from err
            if not isinstance(payload, list):
                raise DataError(f"{path}: expected a JSON list of URLs or of {{url, label}} objects")
            rows = _read_records(payload, spec, need_label, path)
        elif fmt == "jsonl":
            records = []
            for n, text in _read_lines(path):
                if text.strip():
                    try:
                        records.append(json.loads(text))
                    except json.JSONDecodeError as err:
                        raise DataError(f"{path}, line {n}: not valid JSON ({err})") from err
            rows = _read_records(records, spec, need_label, path)
        elif fmt == "parquet":
            import pandas as pd

            rows = _read_records(pd.read_parquet(path).to_dict("records"), spec, need_label, path)
        else:
            raise DataError(f"{path}: format {fmt!r} cannot be read from a file")

    out: list[tuple[int, str, int]] = []
    for line, url, label in rows:
        report.rows_read += 1
        if _is_missing(url):
            report.skipped["empty_url"] += 1
            continue
        url = str(url).strip()
        if _has_bad_bytes(url):
            report.skipped["invalid_utf8"] += 1
            continue
        if len(url) > max_url_chars:
            report.skipped["too_long"] += 1
            continue
        if need_label:
            if _is_missing(label):
                report.skipped["missing_label"] += 1
                continue
            label = parse_label(label, where=f"{where}, line {line}")
        else:
            label = fixed_label
        out.append((line, url, label))
    if not out:
        raise DataError(f"{where}: no usable rows (read {report.rows_read}, skipped {dict(report.skipped)})")
    return out, report
