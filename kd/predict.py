"""Score URLs with a saved classifier (teacher, student or quantized).

    python -m kd.predict --model DIR URL [URL ...]
    python -m kd.predict --model DIR --input urls.txt --output scores.csv

URLs are normalised exactly as in training (:func:`kd.urls.normalize_url`)
and scored through :func:`kd.inference.predict_proba`, the path the evaluation
uses, so a URL gets the same probability here as there. Files are streamed in
chunks; every input row ends up either in the scores or in the rejects file.
"""
from __future__ import annotations

import argparse
import codecs
import csv
import itertools
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kd.errors import UsageError, run_cli
from kd.inference import predict_proba
from kd.urls import normalize_url

DEFAULT_MAX_CHARS = 2048
CHUNK_ROWS = 4096
EXCERPT_CHARS = 200
SCORE_COLUMNS = ("line", "url", "normalized_url", "label", "probability_phishing")
REJECT_COLUMNS = ("line", "reason", "content")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def screen_url(url: str, max_chars: int = DEFAULT_MAX_CHARS) -> tuple[str | None, str | None]:
    """``(normalised URL, None)`` if ``url`` can be scored, else ``(None, why not)``."""
    url = url.strip()
    if not url:
        return None, "empty"
    if len(url) > max_chars:
        return None, f"longer than {max_chars} characters ({len(url)})"
    if _CONTROL.search(url):
        return None, "contains control characters"
    normalized = normalize_url(url)
    if not normalized:
        return None, "empty after normalisation"
    return normalized, None


def default_threshold(model_dir: str | Path) -> tuple[float, str]:
    """``(threshold, where it came from)``: the ``threshold`` key of
    ``MODEL_DIR/metrics.json`` (written by training) if present, else 0.5."""
    metrics = Path(model_dir) / "metrics.json"
    if metrics.is_file():
        threshold = json.loads(metrics.read_text()).get("threshold")
        if threshold is not None:
            return float(threshold), str(metrics)
    return 0.5, "default"


class InputFormatError(ValueError):
    """The input file cannot be read as the format asked for."""


@dataclass
class Row:
    """One input row: 1-based line number, the URL or why there is none, and
    the line as text (undecodable bytes backslash-escaped) for the rejects."""

    line: int
    url: str | None
    reason: str | None
    content: str


def _decode(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def read_rows(lines: Iterable[bytes], column: str = "url", fmt: str = "auto") -> Iterator[Row]:
    """Rows of a file read as byte lines; ``fmt`` is ``auto``, ``lines`` or ``csv``.

    ``csv``: the first line is a header naming ``column``; ``lines``: one URL
    per line, no header; ``auto``: ``csv`` if the first line is such a header.
    Each line is decoded and parsed on its own, so a bad line is one reject.
    """
    lines = iter(lines)
    first = next(lines, None)
    if first is None:
        return
    first = first.removeprefix(codecs.BOM_UTF8)  # spreadsheets write one
    header = _decode(first.rstrip(b"\r\n"))
    fields = next(csv.reader([header]), []) if header is not None else []
    if fmt == "csv" and column not in fields:
        raise InputFormatError(f"the CSV header {fields} has no column {column!r} (name it with --column)")
    is_csv = fmt == "csv" or (fmt == "auto" and column in fields)
    if is_csv:
        index, numbered = fields.index(column), enumerate(lines, start=2)
    else:
        index, numbered = 0, enumerate(itertools.chain([first], lines), start=1)
    for number, raw in numbered:
        raw = raw.rstrip(b"\r\n")
        text = _decode(raw)
        content = raw.decode("utf-8", errors="backslashreplace")[:EXCERPT_CHARS]
        if text is None:
            yield Row(number, None, "not valid UTF-8", content)
            continue
        if not is_csv or not text.strip():
            yield Row(number, text, None, content)
            continue
        try:
            values = next(csv.reader([text], strict=True), [])
        except csv.Error as err:
            yield Row(number, None, f"malformed CSV row ({err})", content)
            continue
        if index >= len(values):
            yield Row(number, None, f"{len(values)} fields, no {column!r} column", content)
        else:
            yield Row(number, values[index], None, content)


@dataclass
class Counts:
    """Rows read from the input; each is either scored or rejected."""

    read: int = 0
    scored: int = 0
    rejected: int = 0


def score_file(
    model,
    tokenizer,
    input_path: str | Path,
    output_path: str | Path,
    rejects_path: str | Path,
    *,
    threshold: float = 0.5,
    column: str = "url",
    fmt: str = "auto",
    max_chars: int = DEFAULT_MAX_CHARS,
    chunk_rows: int = CHUNK_ROWS,
    batch_size: int = 256,
    max_length: int = 128,
    progress: bool | None = None,
) -> Counts:
    """Score every row of ``input_path`` into ``output_path`` (CSV with
    :data:`SCORE_COLUMNS`) or write it to ``rejects_path`` (:data:`REJECT_COLUMNS`).

    Rows are scored ``chunk_rows`` at a time, so memory does not grow with the
    file. ``progress=None`` shows a bar only on a terminal.
    """
    from tqdm.auto import tqdm

    counts = Counts()
    input_path = Path(input_path)
    with (
        input_path.open("rb") as source,
        open(output_path, "w", newline="", encoding="utf-8") as out,
        open(rejects_path, "w", newline="", encoding="utf-8") as rej,
        tqdm(total=input_path.stat().st_size, unit="B", unit_scale=True, desc="scoring",
             disable=None if progress is None else not progress) as bar,
    ):
        scores, rejects = csv.writer(out), csv.writer(rej)
        scores.writerow(SCORE_COLUMNS)
        rejects.writerow(REJECT_COLUMNS)

        def lines():
            for raw in source:
                bar.update(len(raw))
                yield raw

        def flush(chunk: list[tuple[int, str, str]]) -> None:
            probs = predict_proba(model, tokenizer, [n for _, _, n in chunk], normalize=False,
                                  batch_size=batch_size, max_length=max_length)
            for (line, url, normalized), p in zip(chunk, probs):
                label = "phishing" if p >= threshold else "legitimate"
                scores.writerow((line, url, normalized, label, float(p)))
            counts.scored += len(chunk)

        chunk: list[tuple[int, str, str]] = []
        for row in read_rows(lines(), column, fmt):
            counts.read += 1
            normalized, reason = (None, row.reason) if row.reason else screen_url(row.url, max_chars)
            if reason is not None:
                rejects.writerow((row.line, reason, row.content))
                counts.rejected += 1
                continue
            chunk.append((row.line, row.url.strip(), normalized))
            if len(chunk) == chunk_rows:
                flush(chunk)
                chunk = []
        if chunk:
            flush(chunk)
    return counts


def print_table(model, tokenizer, urls: list[str], threshold: float, max_chars: int, **predict_kwargs):
    """Score ``urls`` and print probability, label and URL per line (rejects with their reason)."""
    screened = [screen_url(u, max_chars) for u in urls]
    good = [normalized for normalized, reason in screened if reason is None]
    probs = iter(predict_proba(model, tokenizer, good, normalize=False, **predict_kwargs))
    print(f"{'probability':>11}  {'label':<10}  url")
    for url, (_, reason) in zip(urls, screened):
        if reason is None:
            p = next(probs)
            print(f"{p:>11.4f}  {'phishing' if p >= threshold else 'legitimate':<10}  {url}")
        else:
            print(f"{'-':>11}  {'rejected':<10}  {url[:EXCERPT_CHARS]!r}: {reason}")


def build_parser() -> argparse.ArgumentParser:
    from models.quantized import PRECISIONS

    parser = argparse.ArgumentParser(
        prog="python -m kd.predict",
        description="""\
Score URLs as phishing or legitimate with a saved classifier folder: a teacher,
a student, or a quantized model written by quantize.py (its precision is read
from the folder). URLs are normalised as in training: HTML-entity residue
decoded; scheme, leading 'www.' and trailing '/' removed; host lower-cased.
label is 'phishing' when probability_phishing >= threshold.""",
        epilog="""\
rows that cannot be scored are never dropped silently: an empty line, bytes
that are not valid UTF-8, a URL longer than --max-chars characters, control
characters, nothing left after normalisation, a CSV row that does not parse
or lacks the column. With --input they go to --rejects with their line number
(1-based, counting a CSV header) and the reason; stderr gets a summary of rows
read / scored / rejected. Scores keep the input order. The file is streamed in
chunks of --chunk-rows rows, with a progress bar on a terminal.

examples:
  python -m kd.predict --model runs/student http://paypal.com.verify.xyz/login
  python -m kd.predict --model runs/student-nf4 --input urls.txt --output scores.csv
  python -m kd.predict --model runs/teacher --input data.csv --column link --output scores.csv""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("urls", nargs="*", metavar="URL",
                        help="URLs to score; prints a table (probability, label, url) on stdout")
    parser.add_argument("--model", required=True, metavar="DIR",
                        help="model folder (save_pretrained + tokenizer)")
    parser.add_argument("--input", type=Path, metavar="FILE",
                        help="file to score: one URL per line, or a CSV with a header (see --format)")
    parser.add_argument("--output", type=Path, metavar="CSV",
                        help="scores CSV to write (required with --input); columns: "
                             + ", ".join(SCORE_COLUMNS))
    parser.add_argument("--rejects", type=Path, metavar="CSV",
                        help="rejects CSV (line, reason, first 200 characters of the row); "
                             "default: OUTPUT with the suffix .rejects.csv")
    parser.add_argument("--format", dest="fmt", choices=("auto", "lines", "csv"), default="auto",
                        help="input format; auto (default): CSV if the first line is a header "
                             "containing --column, else one URL per line without header")
    parser.add_argument("--column", default="url", help="the CSV column holding the URL (default: url)")
    parser.add_argument("--threshold", type=float,
                        help="decision threshold on probability_phishing; default: 'threshold' from "
                             "MODEL/metrics.json if present (training writes it), else 0.5")
    parser.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS,
                        help=f"reject URLs longer than this many characters (default: {DEFAULT_MAX_CHARS})")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="load in this precision (default: as saved; a plain fp32/bf16 folder "
                             "can be quantized on the fly, a quantized folder loads only as itself)")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda (default: cuda if available)")
    parser.add_argument("--batch-size", type=int, default=256, help="URLs per forward pass (default: 256)")
    parser.add_argument("--max-length", type=int, default=128,
                        help="truncate to this many tokens, as in training (default: 128)")
    parser.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS,
                        help=f"rows read and scored at a time, bounding memory (default: {CHUNK_ROWS})")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.urls) == bool(args.input):
        parser.error("give either URLs or --input FILE (not both)")
    if args.input and not args.output:
        parser.error("--input needs --output")
    if args.input and not args.input.is_file():
        raise UsageError(f"no such input file: {args.input}")

    from transformers.utils import logging as hf_logging

    from models.quantized import load_classifier

    hf_logging.disable_progress_bar()  # per-tensor "Loading weights" bars; ours is the one to watch
    try:
        model, tokenizer = load_classifier(args.model, args.precision, args.device)
    except ValueError as err:  # an unloadable folder or format, or a precision the device cannot run
        raise UsageError(str(err)) from err
    if args.threshold is not None:
        threshold, source = args.threshold, "--threshold"
    else:
        threshold, source = default_threshold(args.model)
    print(f"threshold {threshold:g} ({source})", file=sys.stderr)
    if args.urls:
        print_table(model, tokenizer, args.urls, threshold, args.max_chars,
                    batch_size=args.batch_size, max_length=args.max_length)
        return 0

    rejects = args.rejects or args.output.with_suffix(".rejects.csv")
    try:
        counts = score_file(
            model, tokenizer, args.input, args.output, rejects, threshold=threshold,
            column=args.column, fmt=args.fmt, max_chars=args.max_chars, chunk_rows=args.chunk_rows,
            batch_size=args.batch_size, max_length=args.max_length,
        )
    except InputFormatError as err:
        raise UsageError(str(err)) from err
    print(f"read {counts.read} rows: scored {counts.scored} -> {args.output}, "
          f"rejected {counts.rejected} -> {rejects}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="python -m kd.predict"))
