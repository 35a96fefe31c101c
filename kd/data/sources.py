"""Training sources: one spec type, and :func:`read_source`, which reads a
labelled URL file into ``(line, url, label)`` rows.

Files of URLs, CSV and JSON lines are read by the one streaming reader,
:mod:`kd.data.reader` (which kd.predict reads its input with); a JSON list, a
parquet table and a hub dataset are read whole. Nothing is lost silently: a
row is either used, skipped for a named reason (counted in
:class:`ReadReport`), or the read fails with an error that names the file, the
line and what was expected.

Labels are integers: 0 = legitimate, 1 = phishing.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

from kd.data.reader import (  # DataError is raised here too: the name every caller imports from sources
    LABEL_COLUMNS,
    LABEL_VALUES,
    PHISHING,
    URL_COLUMNS,
    Columns,
    DataError,
    Row,
    column_index,
    detect_format,
    input_head,
    open_input,
    read_rows,
)

FORMATS = ("auto", "hannousse", "phishtank", "lines", "csv", "json", "jsonl", "parquet", "hf")

SKIP_REASONS = {
    "blank_line": "a blank line (no fields at all)",
    "empty_url": "the URL cell is empty, blank or NaN",
    "invalid_utf8": "the row is not valid UTF-8",
    "too_long": "the URL is longer than max_url_chars",
    "control_characters": "the URL holds a control character (NUL, tab, a line break, a bidi or zero-width mark)",
    "null_url": "the URL cell is a null placeholder (null, None, NaN), not a URL",
    "missing_label": "the label cell is empty or NaN",
    "malformed_csv": "a CSV line that does not parse (strict quoting)",
    "field_spans_lines": "a line of a quoted CSV field that spans lines (a URL holds no line break)",
    "missing_field": "a CSV row with no field under the URL column, or a JSON object with no URL key",
    "not_a_string": "a JSON line whose URL is not a string (a number, a list, null, ...)",
}
"""Why a row may be skipped while reading (all counted and reported)."""

NULL_URLS = frozenset({"null", "none", "nan", "nil", "undefined"})
"""Placeholders that exports write for a missing value (compared case-insensitively)."""

CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f\u061c\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
"""What no URL holds: ASCII controls (NUL, tab, line breaks, DEL), and the invisible
marks that make a URL read other than it is: zero-width space / joiners and
left-to-right / right-to-left marks (U+200B-U+200F), bidi embeddings and
overrides (U+202A-U+202E), isolates (U+2066-U+2069), the Arabic letter mark
(U+061C), and U+FEFF anywhere but a file's first bytes (there it is a
byte-order mark, removed on reading)."""

def url_problem(url: str, max_chars: int) -> str | None:
    """Why a (stripped) URL cannot be used, as a key of :data:`SKIP_REASONS`, or None.

    The one screening that training data (:func:`read_source`) and
    ``kd.predict`` both apply, so that what a model never trained on is also
    never scored.
    """
    if not url:
        return "empty_url"
    if _has_bad_bytes(url):
        return "invalid_utf8"
    if len(url) > max_chars:
        return "too_long"
    if CONTROL_CHARACTERS.search(url):
        return "control_characters"
    if url.lower() in NULL_URLS:
        return "null_url"
    return None


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


def _read_records(records, spec: SourceSpec, need_label: bool, where) -> Iterator[Row]:
    """:class:`Row` s of JSON-like records (a JSON list, a parquet table, a hub
    dataset), ``(number, record)`` pairs: URL strings, or objects with url/label
    keys, the keys found in the first object."""
    url_key = label_key = None
    for index, record in records:
        if isinstance(record, str):
            if need_label:
                raise DataError(f"{where}: item {index} is a bare URL, so the source needs label=...")
            yield Row(index, record)
            continue
        if not isinstance(record, dict):
            raise DataError(f"{where}: item {index} is {type(record).__name__}, expected a URL string or an object")
        if url_key is None:
            keys = list(record)
            url_key = keys[column_index(keys, spec.url_column, URL_COLUMNS, "url", where, "url_column=...")]
            if need_label:
                label_key = keys[column_index(keys, spec.label_column, LABEL_COLUMNS, "label", where, "label_column=...")]
        yield Row(index, record.get(url_key), label=record.get(label_key) if label_key else None)


def _read_hub(spec: SourceSpec, need_label: bool) -> Iterator[Row]:
    from kd.data.paths import HUB_DATASET

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
    return _read_records(enumerate(table.to_list(), start=1), spec, need_label, f"hf:{name}")


def _file_rows(path: Path, fmt: str, spec: SourceSpec, need_label: bool) -> Iterator[Row]:
    """The rows of a local file in one of :data:`kd.data.reader.STREAM_FORMATS`, streamed by the reader."""
    columns = Columns(url=spec.url_column, label=spec.label_column, need_label=need_label)
    with open_input(path) as (lines, _):
        yield from read_rows(lines, fmt, columns, where=path)


def _detect_source_format(path: Path, head: bytes, spec: SourceSpec) -> str:
    columns = URL_COLUMNS if spec.url_column is None else (spec.url_column.lower(),)
    fmt = detect_format(path, head, columns)
    first = head.decode("utf-8", errors="replace").strip().lower()
    if fmt == "csv" and first.startswith("phish_id,"):
        return "phishtank"
    if fmt == "csv" and first.startswith("url,") and ",status" in first:
        return "hannousse"
    return fmt


def read_source(
    spec: SourceSpec, data_dir: Path | None = None, *, max_url_chars: int = 2048
) -> tuple[list[tuple[int, str, int]], ReadReport]:
    """Read one source into ``[(line, raw_url, label), ...]`` and its report.

    ``line`` is the 1-based line (CSV / text / JSON lines) or item (JSON,
    parquet) number. The format is :func:`detect_format`'s unless
    ``spec.format`` names one. One URL a line, CSV and JSON lines are read by
    :func:`kd.data.reader.read_rows`, row for row as kd.predict reads them
    (gzip and UTF-16 with a byte-order mark too); its rows without a URL are
    counted as skips, except a JSON line that does not parse. Raises :class:`DataError` for a missing or empty
    file, an ambiguous format, a missing column, an unknown label value, or a
    source that yields no usable rows.
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
        head = input_head(path)
        if head is None:
            raise DataError(f"{path}: empty file" + ("" if path.stat().st_size == 0 else " (only blank lines)"))
        fmt = _detect_source_format(path, head, spec) if spec.format == "auto" else spec.format
        if fmt == "lines":
            if need_label:
                raise DataError(f"{path}: a one-URL-per-line file holds no labels; give label=phishing or label=legitimate")
            rows = _file_rows(path, "lines", spec, need_label)
        elif fmt in ("csv", "hannousse", "phishtank"):
            if fmt == "phishtank" and need_label:
                fixed_label, need_label = PHISHING, False  # PhishTank lists verified phishing only
            rows = _file_rows(path, "csv", spec, need_label)
        elif fmt == "json":
            with open(path, encoding="utf-8-sig", errors="surrogateescape") as handle:
                try:
                    payload = json.load(handle)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}: not valid JSON ({err})") from err
            if not isinstance(payload, list):
                raise DataError(f"{path}: expected a JSON list of URLs or of {{url, label}} objects")
            rows = _read_records(enumerate(payload, start=1), spec, need_label, path)
        elif fmt == "jsonl":
            rows = _file_rows(path, "jsonl", spec, need_label)
        elif fmt == "parquet":
            import pandas as pd

            try:
                table = pd.read_parquet(path)
            except Exception as err:  # pyarrow raises several types for a file that is not parquet
                raise DataError(f"{path}: not a readable parquet file ({type(err).__name__}: {err})") from err
            rows = _read_records(enumerate(table.to_dict("records"), start=1), spec, need_label, path)
        else:
            raise DataError(f"{path}: format {fmt!r} cannot be read from a file")

    out: list[tuple[int, str, int]] = []
    for row in rows:
        report.rows_read += 1
        if row.skip == "invalid_json":  # a training file is expected to be well-formed JSON
            raise DataError(f"{where}, line {row.line}: {row.reason}")
        problem = row.skip or ("empty_url" if _is_missing(row.url) else url_problem(str(row.url).strip(), max_url_chars))
        if problem is not None:
            report.skipped[problem] += 1
            continue
        url = str(row.url).strip()
        if need_label:
            if _is_missing(row.label):
                report.skipped["missing_label"] += 1
                continue
            label = parse_label(row.label, where=f"{where}, line {row.line}")
        else:
            label = fixed_label
        out.append((row.line, url, label))
    if not out:
        raise DataError(f"{where}: no usable rows (read {report.rows_read}, skipped {dict(report.skipped)})")
    return out, report
