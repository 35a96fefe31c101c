"""Readers for labelled URL files: one function per format, one spec type.

Every reader yields ``(line, url, label)`` and counts what it skips, so that
nothing is lost silently: a row is either used, skipped for a named reason
(counted in :class:`ReadReport`), or the read fails with an error that names
the file, the line and what was expected.

Labels are integers: 0 = legitimate, 1 = phishing.
"""
from __future__ import annotations

import codecs
import csv
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

LEGITIMATE, PHISHING = 0, 1

LABEL_VALUES = {
    **dict.fromkeys(("0", "legitimate", "legit", "benign", "good", "safe", "clean", "false", "no", "ham"), LEGITIMATE),
    **dict.fromkeys(("1", "phishing", "phish", "malicious", "bad", "true", "yes", "spam"), PHISHING),
}
"""Accepted label spellings (case-insensitive); ``0.0``/``1.0`` are accepted too."""

URL_COLUMNS = ("url", "urls", "uri", "link", "website", "address")
LABEL_COLUMNS = ("label", "labels", "status", "class", "type", "target", "is_phishing", "phishing", "result")
FORMATS = ("auto", "hannousse", "phishtank", "lines", "csv", "json", "jsonl", "parquet", "hf")

SKIP_REASONS = {
    "blank_line": "a blank line (no fields at all)",
    "empty_url": "the URL cell is empty, blank or NaN",
    "invalid_utf8": "the row is not valid UTF-8",
    "too_long": "the URL is longer than max_url_chars",
    "control_characters": "the URL holds a control character (NUL, tab, a line break, a bidi or zero-width mark)",
    "null_url": "the URL cell is a null placeholder (null, None, NaN), not a URL",
    "missing_label": "the label cell is empty or NaN",
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

FILE_FORMATS = ("lines", "csv", "jsonl", "json", "parquet")
"""What :func:`detect_format` tells apart."""

_FORMATS_OF_SUFFIX = {
    ".jsonl": ("jsonl",), ".ndjson": ("jsonl",), ".json": ("json", "jsonl"), ".parquet": ("parquet",),
    ".csv": ("csv", "lines"), ".tsv": ("csv", "lines"), ".txt": ("lines", "csv"), ".lst": ("lines",), ".list": ("lines",),
}
_COLUMN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_ .\-]*")


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


def first_line(path: Path, limit: int = 1 << 16) -> bytes | None:
    """The first non-blank line of a file (at most ``limit`` bytes, without a
    UTF-8 byte-order mark or line end), or None if the file holds nothing else."""
    with open(path, "rb") as handle:
        return first_line_of(handle, limit)


def first_line_of(handle, limit: int = 1 << 16) -> bytes | None:
    """:func:`first_line` of a binary handle (anything with ``readline(limit)``) at its start."""
    for number, raw in enumerate(iter(lambda: handle.readline(limit), b"")):
        if number == 0:
            raw = raw.removeprefix(codecs.BOM_UTF8)
        if raw.strip():
            return raw.rstrip(b"\r\n")
    return None


def _looks_like_header(fields: list[str], url_columns: tuple[str, ...]) -> bool:
    names = [f.strip() for f in fields]
    if not any(names) or not all(n == "" or _COLUMN_NAME.fullmatch(n) for n in names):
        return False
    return len(names) > 1 or names[0].lower() in url_columns


def detect_format(path: Path, head: bytes, url_columns: tuple[str, ...] = URL_COLUMNS, option: str = "format=") -> str:
    """One of :data:`FILE_FORMATS` for a file, from its first non-blank line
    ``head`` (see :func:`first_line`) checked against its extension.

    ``[`` starts a JSON list, ``{`` a JSON-lines file; a comma-separated line of
    column names is a CSV header, which must name a URL column (one of
    ``url_columns``, lower case); anything else is one URL per line. A file
    that could be read two ways is refused with a :class:`DataError` that names
    ``option`` (``format=`` for a source, ``--format`` for kd.predict): a header
    without a URL column, rows that end in a label but have no header, content
    that contradicts the extension.
    """
    suffix = path.suffix.lower()
    if suffix == ".parquet" or head.startswith(b"PAR1"):
        return "parquet"
    text = head.decode("utf-8", errors="replace").strip()
    fields = next(csv.reader([text]), [])
    if text.startswith("["):
        found = "json"
    elif text.startswith("{") or (text.startswith('"') and suffix in (".jsonl", ".ndjson")):
        found = "jsonl"
    elif _looks_like_header(fields, url_columns):
        if not {f.strip().lower() for f in fields} & set(url_columns):
            raise DataError(
                f"{path}: no url column in the first line, a CSV header with columns {fields} "
                f"(looked for {list(url_columns)}); name it with {'url_column=...' if option == 'format=' else '--column'}, "
                f"or, if the line is a URL, give {option}lines"
            )
        found = "csv"
    elif len(fields) > 1 and fields[-1].strip().lower() in (*LABEL_VALUES, "0.0", "1.0"):
        raise DataError(
            f"{path}: the first line {text[:80]!r} looks like a CSV row with a label but no header; "
            f"add a header line (url,label) or, if the line is one URL, give {option}lines"
        )
    else:
        found = "lines"
    allowed = _FORMATS_OF_SUFFIX.get(suffix)
    if allowed is not None and found not in allowed:
        raise DataError(
            f"{path}: the name says {'/'.join(allowed)} but the first line {text[:80]!r} looks like {found}; "
            f"give {option}{allowed[0]} or {option}{found} to say which"
        )
    return found


BLANK = object()
"""What a reader yields in place of a URL for a blank line (counted as ``blank_line``)."""


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
            if number == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            yield number, raw.rstrip(b"\r\n").decode("utf-8", errors="surrogateescape")


def _read_csv(path: Path, spec: SourceSpec, need_label: bool) -> Iterator[tuple[int, object, object]]:
    csv.field_size_limit(min(2**31 - 1, 2**62))
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
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
                yield line, BLANK, None
                continue
            url = row[url_col] if url_col < len(row) else None
            label = row[label_col] if label_col is not None and label_col < len(row) else None
            yield line, url, label


def _read_records(records, spec: SourceSpec, need_label: bool, where, unit: str = "item") -> Iterator[tuple[int, object, object]]:
    """JSON-like records, ``(number, record)`` pairs: URL strings, or objects with
    url/label keys. ``unit`` names the number in errors (``item``, ``line``)."""
    url_key = label_key = None
    for index, record in records:
        if record is BLANK:
            yield index, BLANK, None
            continue
        if isinstance(record, str):
            if need_label:
                raise DataError(f"{where}: {unit} {index} is a bare URL, so the source needs label=...")
            yield index, record, None
            continue
        if not isinstance(record, dict):
            raise DataError(f"{where}: {unit} {index} is {type(record).__name__}, expected a URL string or an object")
        if url_key is None:
            url_key = _pick_column(list(record), spec.url_column, URL_COLUMNS, "url", where)
            if need_label:
                label_key = _pick_column(list(record), spec.label_column, LABEL_COLUMNS, "label", where)
        yield index, record.get(url_key), record.get(label_key) if label_key else None


def _read_hub(spec: SourceSpec, need_label: bool):
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


def _jsonl_records(path: Path) -> Iterator[tuple[int, object]]:
    for n, text in _read_lines(path):
        if not text.strip():
            yield n, BLANK
            continue
        try:
            yield n, json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {n}: not valid JSON ({err.msg} at column {err.colno})") from err


def _detect_source_format(path: Path, spec: SourceSpec) -> str:
    head = first_line(path)
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
    ``spec.format`` names one. Raises :class:`DataError` for a missing or empty
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
        if first_line(path) is None:
            raise DataError(f"{path}: empty file" + ("" if path.stat().st_size == 0 else " (only blank lines)"))
        fmt = _detect_source_format(path, spec) if spec.format == "auto" else spec.format
        if fmt == "lines":
            if need_label:
                raise DataError(f"{path}: a one-URL-per-line file holds no labels; give label=phishing or label=legitimate")
            rows = ((n, text if text.strip() else BLANK, None) for n, text in _read_lines(path))
        elif fmt in ("csv", "hannousse", "phishtank"):
            if fmt == "phishtank" and need_label:
                fixed_label, need_label = PHISHING, False  # PhishTank lists verified phishing only
            rows = _read_csv(path, spec, need_label)
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
            rows = _read_records(_jsonl_records(path), spec, need_label, path, unit="line")
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
    for line, url, label in rows:
        report.rows_read += 1
        problem = "blank_line" if url is BLANK else "empty_url" if _is_missing(url) else url_problem(str(url).strip(), max_url_chars)
        if problem is not None:
            report.skipped[problem] += 1
            continue
        url = str(url).strip()
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
