"""The one streaming reader of URL files, for training sources and kd.predict alike.

A file is read as byte lines (:func:`open_input`: UTF-8, UTF-16 with a
byte-order mark, either gzip-compressed), its format found from its first
non-blank line and its name (:func:`detect_format`: one URL per line, CSV with
a header, JSON lines), and each line becomes one :class:`Row` with its 1-based
line number: a URL, or the reason it holds none. The same file thus gives the
same rows to :func:`kd.data.sources.read_source` (which counts the rows
without a URL as skips) and to ``kd.predict`` (which writes them to its
rejects file).

Rules shared by every format: a UTF-8 byte-order mark on the first line is
dropped; a blank line is a row without a URL; undecodable bytes are kept as
surrogates (``errors="surrogateescape"``) for the URL screening to name; a
CSV line is parsed on its own (strict quoting), so one bad line is one bad
row, and a quoted field that runs over several lines (a URL holds no line
break) makes each of its lines a row without a URL.
"""
from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import re
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

LEGITIMATE, PHISHING = 0, 1

LABEL_VALUES = {
    **dict.fromkeys(("0", "legitimate", "legit", "benign", "good", "safe", "clean", "false", "no", "ham"), LEGITIMATE),
    **dict.fromkeys(("1", "phishing", "phish", "malicious", "bad", "true", "yes", "spam"), PHISHING),
}
"""Accepted label spellings (case-insensitive); ``0.0``/``1.0`` are accepted too."""

URL_COLUMNS = ("url", "urls", "uri", "link", "website", "address")
LABEL_COLUMNS = ("label", "labels", "status", "class", "type", "target", "is_phishing", "phishing", "result")

FILE_FORMATS = ("lines", "csv", "jsonl", "json", "parquet")
"""What :func:`detect_format` tells apart."""
STREAM_FORMATS = ("lines", "csv", "jsonl")
"""The formats :func:`read_rows` streams line by line."""

EXCERPT_CHARS = 200
MAX_FIELD_LINES = 8
"""A CSV field quoted across more lines than this is not looked for: the line is malformed."""

_FORMATS_OF_SUFFIX = {
    ".jsonl": ("jsonl",), ".ndjson": ("jsonl",), ".json": ("json", "jsonl"), ".parquet": ("parquet",),
    ".csv": ("csv", "lines"), ".tsv": ("csv", "lines"), ".txt": ("lines", "csv"), ".lst": ("lines",), ".list": ("lines",),
}
_COLUMN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_ .\-]*")
GZIP_MAGIC = b"\x1f\x8b"
UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


class DataError(ValueError):
    """Bad input data: the message names the file, the row and what was expected."""


@dataclass(slots=True)
class Row:
    """One line of a URL file (a CSV header excepted).

    ``url`` is the URL cell as read (not yet screened), or None with ``reason``
    (words for kd.predict's rejects) and ``skip`` (the same as a key of
    :data:`kd.data.sources.SKIP_REASONS`) saying why the row holds none.
    ``label`` and ``extra`` are the cells of the label column and of the extra
    columns asked for (None where the row has none); ``raw`` is the line's bytes.
    """

    line: int
    url: str | None
    reason: str | None = None
    skip: str | None = None
    label: object = None
    extra: tuple = ()
    raw: bytes = b""

    @property
    def content(self) -> str:
        """The line as text for a rejects file: its first characters, undecodable bytes backslash-escaped."""
        return self.raw.decode("utf-8", errors="backslashreplace")[:EXCERPT_CHARS]


def first_line_of(handle, limit: int = 1 << 16) -> bytes | None:
    """The first non-blank line of a binary handle (anything with
    ``readline(limit)``) at its start, at most ``limit`` bytes, without a UTF-8
    byte-order mark or line end; None if the handle holds nothing else."""
    for number, raw in enumerate(iter(lambda: handle.readline(limit), b"")):
        if number == 0:
            raw = raw.removeprefix(codecs.BOM_UTF8)
        if raw.strip():
            return raw.rstrip(b"\r\n")
    return None


class _Utf8Lines:
    """Byte lines in UTF-8 from a text stream (``readline(limit)`` and iteration):
    what the readers take, whatever the file's own encoding."""

    def __init__(self, text: io.TextIOBase):
        self.text = text

    def readline(self, limit: int = -1) -> bytes:
        return self.text.readline(limit).encode("utf-8")

    def __iter__(self) -> Iterator[bytes]:
        return (line.encode("utf-8") for line in self.text)


@contextmanager
def open_input(path: Path):
    """``(lines, raw)``: binary lines of the file as UTF-8, and the file handle
    underneath (its position measures progress).

    A gzip file (magic bytes ``1f 8b``) is read through gzip; UTF-16 text with a
    byte-order mark is decoded (a code unit that is not UTF-16 becomes U+FFFD)
    and re-encoded; anything else is taken as it is (UTF-8, checked cell by cell).
    """
    with open(path, "rb") as raw:
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if raw.peek(2)[:2] == GZIP_MAGIC else raw
        with stream:
            if stream.peek(2)[:2] in UTF16_BOMS:
                yield _Utf8Lines(io.TextIOWrapper(stream, encoding="utf-16", errors="replace", newline="\n")), raw
            else:
                yield stream, raw


def input_head(path: Path) -> bytes | None:
    """The first non-blank line of the file as :func:`open_input` reads it
    (:func:`first_line_of`), or None if it holds nothing else. Raises
    :class:`DataError` for UTF-16 without a byte-order mark (half its bytes NUL),
    which would otherwise be read as one bad row per line, for a gzip file that
    does not decompress, and for a file that cannot be read."""
    try:
        with open_input(path) as (lines, _):
            head = first_line_of(lines)
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise DataError(f"{path} starts like a gzip file but does not decompress ({err})") from None
    except OSError as err:  # e.g. no permission to read it
        raise DataError(f"{path}: {err.strerror or err}") from None
    if head is None or head.startswith(b"PAR1"):  # parquet is binary: its NULs say nothing
        return head
    if len(head) >= 2 and 2 * head.count(b"\0") >= len(head):
        raise DataError(f"{path}: half the bytes of the first line are NUL, as in UTF-16 without a "
                        "byte-order mark; convert it to UTF-8 (e.g. iconv -f UTF-16LE -t UTF-8)")
    return head


def csv_fields(text: str) -> list[str]:
    """The fields of one CSV line (the default dialect, strict quoting); raises :class:`csv.Error`."""
    if '"' not in text and "\r" not in text:
        return text.split(",")  # what csv.reader gives for a line with nothing quoted, several times faster
    return next(csv.reader([text], strict=True), [])


def _looks_like_header(fields: list[str], url_columns: tuple[str, ...]) -> bool:
    names = [f.strip() for f in fields]
    if not any(names) or not all(n == "" or _COLUMN_NAME.fullmatch(n) for n in names):
        return False
    return len(names) > 1 or names[0].lower() in url_columns


def detect_format(path: Path, head: bytes, url_columns: tuple[str, ...] = URL_COLUMNS, option: str = "format=") -> str:
    """One of :data:`FILE_FORMATS` for a file, from its first non-blank line
    ``head`` (see :func:`input_head`) checked against its extension.

    ``[`` starts a JSON list, ``{`` a JSON-lines file; a comma-separated line of
    column names is a CSV header, which must name a URL column (one of
    ``url_columns``, lower case); anything else is one URL per line (also a
    ``.csv`` without a header). A file that could be read two ways is refused
    with a :class:`DataError` that names ``option`` (``format=`` for a source,
    ``--format`` for kd.predict): a header without a URL column, rows that end
    in a label but have no header, content that contradicts the extension.
    """
    suffix = path.suffix.lower()
    if suffix == ".parquet" or head.startswith(b"PAR1"):
        return "parquet"
    text = head.decode("utf-8", errors="replace").strip()
    try:
        fields = csv_fields(text)
    except csv.Error:
        fields = [text]
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


@dataclass(frozen=True)
class Columns:
    """Which cells :func:`read_rows` takes from a CSV row or a JSON object.

    ``url``: the URL column or key (any case; default: the first of
    :data:`URL_COLUMNS` present). ``label``: the label column (default: the
    first of :data:`LABEL_COLUMNS` present), read only when ``need_label``.
    ``extra``: further columns, each required in a CSV header. ``hint`` ends
    the error for a header without the URL column: how to name it.
    """

    url: str | None = None
    label: str | None = None
    need_label: bool = False
    extra: tuple[str, ...] = ()
    hint: str = "url_column=..."


def column_index(fields: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, where, hint: str) -> int:
    """Index of ``wanted`` (exactly, else in any case) among ``fields`` (a CSV header, a record's keys),
    or of the first of ``candidates`` when none is named; a :class:`DataError`
    naming ``what`` and the header otherwise."""
    if wanted is not None and wanted in fields:
        return fields.index(wanted)
    lower = [f.strip().lower() for f in fields]
    for name in (wanted.lower(),) if wanted is not None else candidates:
        if name in lower:
            return lower.index(name)
    looked = f"{wanted!r}" if wanted is not None else f"looked for {list(candidates)}"
    raise DataError(f"{where}: no {what} column among the columns {fields} ({looked}; name it with {hint})")


def _numbered(lines: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """``(number, line)`` from 1, without the first line's UTF-8 byte-order mark or any line end."""
    for number, raw in enumerate(lines, start=1):
        if number == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)
        yield number, raw.rstrip(b"\r\n")


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="surrogateescape")


def _blank(number: int, raw: bytes) -> Row:
    return Row(number, None, "empty", "blank_line", raw=raw)


def _line_rows(numbered: Iterator[tuple[int, bytes]]) -> Iterator[Row]:
    for number, raw in numbered:
        text = _decode(raw)
        yield Row(number, text, raw=raw) if text.strip() else _blank(number, raw)


def _join_quoted(text: str, take) -> tuple[list[tuple[int, bytes]], bool]:
    """Read ahead (``take()``) until the quote opened on the line ``text`` closes.

    Returns the lines read and whether they close it into one valid CSV row;
    at most ``MAX_FIELD_LINES`` lines in all.
    """
    taken, joined = [], text
    while joined.count('"') % 2 and len(taken) < MAX_FIELD_LINES - 1:
        ahead = take()
        if ahead is None:
            break
        taken.append(ahead)
        joined += "\n" + _decode(ahead[1])
    if taken and joined.count('"') % 2 == 0:
        try:
            csv_fields(joined)
            return taken, True
        except csv.Error:
            pass
    return taken, False


def _cell(values: list[str], index: int | None):
    return values[index] if index is not None and index < len(values) else None


def _csv_rows(numbered: Iterator[tuple[int, bytes]], columns: Columns, where) -> Iterator[Row]:
    """Blank lines, the header (the first other line: no row), then one row a line."""
    for number, raw in numbered:
        if raw.strip():
            break
        yield _blank(number, raw)
    else:
        return
    try:
        header = csv_fields(_decode(raw))
    except csv.Error as err:
        raise DataError(f"{where}: the CSV header (line {number}) does not parse: {err}") from None
    url_at = column_index(header, columns.url, URL_COLUMNS, "url", where, columns.hint)
    label_at = column_index(header, columns.label, LABEL_COLUMNS, "label", where, "label_column=...") if columns.need_label else None
    extra_at = [column_index(header, name, (), name, where, "a file that has it") for name in columns.extra]
    url_name = header[url_at]
    pending: list[tuple[int, bytes]] = []  # lines read ahead and given back

    def take():
        return pending.pop(0) if pending else next(numbered, None)

    while (item := take()) is not None:
        number, raw = item
        text = _decode(raw)
        if not text.strip():
            yield _blank(number, raw)
            continue
        try:
            values = csv_fields(text)
        except csv.Error as err:
            taken, closed = _join_quoted(text, take)
            if closed:
                reason = f"a quoted field spans lines {number}-{taken[-1][0]} (a URL holds no line break)"
                for n, r in (item, *taken):
                    yield Row(n, None, reason, "field_spans_lines", raw=r)
            else:
                pending[:0] = taken
                yield Row(number, None, f"malformed CSV row ({err})", "malformed_csv", raw=raw)
            continue
        if url_at >= len(values):
            yield Row(number, None, f"{len(values)} fields, no {url_name!r} column", "missing_field", raw=raw)
        else:
            yield Row(number, values[url_at], label=_cell(values, label_at),
                      extra=tuple(_cell(values, i) for i in extra_at), raw=raw)


def _key(record: dict, wanted: str | None, candidates: tuple[str, ...]):
    """The key of ``record`` named ``wanted`` (any case), or the first of ``candidates``; None if absent."""
    keys = {str(k).lower(): k for k in record}
    return next((keys[n] for n in ((wanted.lower(),) if wanted else candidates) if n in keys), None)


def _jsonl_rows(numbered: Iterator[tuple[int, bytes]], columns: Columns, where) -> Iterator[Row]:
    """JSON lines: each line a URL string or an object holding one under the URL key.
    A bare URL string where a label is needed is a :class:`DataError`."""
    for number, raw in numbered:
        text = _decode(raw)
        if not text.strip():
            yield _blank(number, raw)
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            yield Row(number, None, f"not valid JSON ({err.msg} at column {err.colno})", "invalid_json", raw=raw)
            continue
        label, extra = None, ()
        if isinstance(record, dict):
            key = _key(record, columns.url, URL_COLUMNS)
            if key is None:
                yield Row(number, None, f"no {columns.url or 'URL'!r} key in the object", "missing_field", raw=raw)
                continue
            if columns.need_label:
                label_key = _key(record, columns.label, LABEL_COLUMNS)
                label = None if label_key is None else record[label_key]
            extra = tuple(record.get(k) for k in (_key(record, name, ()) for name in columns.extra))
            record = record[key]
        elif isinstance(record, str) and columns.need_label:
            raise DataError(f"{where}: line {number} is a bare URL, so the source needs label=...")
        if isinstance(record, str):
            yield Row(number, record, label=label, extra=extra, raw=raw)
        else:
            yield Row(number, None, f"a JSON {type(record).__name__}, not a URL string", "not_a_string", raw=raw)


def read_rows(lines: Iterable[bytes], fmt: str = "lines", column: str | Columns | None = None, where="the input") -> Iterator[Row]:
    """The :class:`Row` of every line of a file read as byte lines (:func:`open_input`),
    in ``fmt`` (one of :data:`STREAM_FORMATS`; :func:`detect_format` finds it).

    ``lines``: one URL per line; ``csv``: the first non-blank line is a header
    naming the URL column; ``jsonl``: one JSON value a line. ``column`` names the
    URL column (or gives all the :class:`Columns`). Line numbers count from 1
    and include blank lines and the header, which is the only line that yields
    no row. Raises :class:`DataError` (naming ``where``) for a CSV header without
    the columns asked for.
    """
    columns = column if isinstance(column, Columns) else Columns(url=column)
    numbered = _numbered(lines)
    if fmt == "lines":
        return _line_rows(numbered)
    if fmt == "jsonl":
        return _jsonl_rows(numbered, columns, where)
    if fmt == "csv":
        csv.field_size_limit(min(2**31 - 1, 2**62))  # a cell as long as a line: too_long, not a parse error
        return _csv_rows(numbered, columns, where)
    raise DataError(f"{where}: format {fmt!r} is not read line by line (streamed: {', '.join(STREAM_FORMATS)})")
