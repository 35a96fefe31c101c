"""Score URLs with a saved classifier (teacher, student, quantized or ONNX export).

    python -m kd.predict --model DIR URL [URL ...]
    python -m kd.predict --model DIR --input urls.txt --output scores.csv

URLs are normalised exactly as in training (:func:`kd.data.urls.normalize_url`)
and scored through :func:`kd.eval.inference.predict_proba`, the path the evaluation
uses, so a URL gets the same probability here as there. Files are streamed in
windows of rows, each scored in length-sorted batches with the input order
restored; every input row ends up either in the scores or in the rejects file.
Under ``torchrun --nproc_per_node N`` the windows are shared out among the N
processes and rank 0 joins their parts in input order.

Analysts open the CSVs in spreadsheets: a text field that starts like a formula
(``=cmd|' /C calc'!A0``, ``+HYPERLINK(...)``) gets a ``'`` in front
(:func:`spreadsheet_safe`); removing one leading ``'`` gives the URL back.
"""
from __future__ import annotations

import argparse
import csv
import heapq
import itertools
import os
import shutil
import stat
import sys
import zlib
from collections.abc import Iterable
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import torch

from kd.argtypes import positive_int, probability, token_length
from kd.data.batching import windows
from kd.errors import OutputFailed, UsageError, run_cli
from kd.eval.inference import check_max_length, predict_proba, scoring_model
from kd.eval.report import temp_path_beside
from kd.eval.scoring import saved_scoring, scoring_autocast
from kd.data.reader import (
    EXCERPT_CHARS,
    STREAM_FORMATS,
    URL_COLUMNS,
    Columns,
    DataError,
    Row,
    column_index,
    csv_fields,
    detect_format,
    input_head,
    open_input,
    read_rows,
)
from kd.data.sources import url_problem
from kd.data.urls import has_url_normalizer, normalize_url
from kd.upgrade import UPGRADE_COMMAND
from kd.train.distributed import DistInfo, all_reduce_sum, barrier, close_distributed, default_device, init_distributed

DEFAULT_MAX_CHARS = 2048
CHUNK_ROWS = 65536
"""Rows read, length-sorted and scored at a time (the window): bounds memory, and keeps padding low."""
SCORE_COLUMNS = ("line", "url", "normalized_url", "label", "probability_phishing")
REJECT_COLUMNS = ("line", "reason", "content")
COLUMN_HINT = "--column, or give --format lines"
"""How to name the URL column, said when a CSV header has none."""


def screen_url(url: str, max_chars: int = DEFAULT_MAX_CHARS) -> tuple[str | None, str | None]:
    """``(normalised URL, None)`` if ``url`` can be scored, else ``(None, why not)``.

    The screening of training data (:func:`kd.data.sources.url_problem`), then the
    training-time normalisation."""
    url = url.strip()
    problem = url_problem(url, max_chars)
    if problem is not None:
        return None, {
            "empty_url": "empty",
            "invalid_utf8": "not valid UTF-8",
            "too_long": f"longer than {max_chars} characters ({len(url)})",
            "control_characters": "contains control characters",
            "null_url": f"a null placeholder ({url}), not a URL",
        }[problem]
    normalized = normalize_url(url)
    if not normalized:
        return None, "empty after normalisation"
    return normalized, None


def default_threshold(model_dir: str | Path) -> tuple[float, str]:
    """``(threshold, where it came from)``: the ``threshold`` key of
    ``MODEL_DIR/metrics.json`` (written by training) if present, else 0.5."""
    threshold, _, source = saved_scoring(model_dir)
    return threshold, source


class InputFormatError(ValueError):
    """The input file cannot be read as the format asked for."""


def check_input_file(path: Path) -> None:
    """Refuse an input that is not a regular file, saying what it is: it is read
    twice (its format detected, then scored), which a pipe or a terminal cannot be
    (``--input -`` copies standard input to a file first: :func:`stdin_as_file`)."""
    if not path.exists():
        raise InputFormatError(f"no such input file: {path}")
    mode = path.stat().st_mode
    kinds = {stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a named pipe (FIFO)", stat.S_ISSOCK: "a socket",
             stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device"}
    kind = next((name for test, name in kinds.items() if test(mode)), None)
    if kind is not None:
        raise InputFormatError(f"--input {path} is {kind}, not a file"
                               + (": write what it gives to a file first" if kind != "a folder" else ""))


def input_format(path: Path, fmt: str, column: str | None) -> str:
    """``fmt`` or, for ``auto``, the format :func:`kd.data.reader.detect_format` finds
    (the training-data detection) in the first line :func:`kd.data.reader.input_head`
    reads; only lines, CSV and JSON lines stream. A CSV header must name the URL
    column. Raises :class:`InputFormatError`."""
    try:
        head = input_head(path)
        if head is None:
            return "lines"  # nothing but blank lines: each is a reject
        if fmt == "auto":
            fmt = detect_format(path, head, (column.lower(),) if column else URL_COLUMNS, option="--format ")
            if fmt not in STREAM_FORMATS:
                raise InputFormatError(f"{path} holds {fmt}; kd.predict streams {', '.join(STREAM_FORMATS)} "
                                       "(write it as JSON lines, or give --format)")
        if fmt == "csv":
            column_index(csv_fields(head.decode("utf-8", errors="surrogateescape")), column, URL_COLUMNS, "url",
                         path, COLUMN_HINT)
    except csv.Error as err:
        raise InputFormatError(f"{path}: the CSV header does not parse: {err}") from None
    except DataError as err:
        raise InputFormatError(str(err)) from None
    return fmt


@dataclass
class Counts:
    """Rows read from the input; each is either scored or rejected. ``failed``
    rejects are those the model gave no probability in [0, 1] (exit status 1)."""

    read: int = 0
    scored: int = 0
    rejected: int = 0
    failed: int = 0


def check_paths(input_path: Path, output_path: Path, rejects_path: Path) -> None:
    """Refuse an input, output and rejects file that are the same file (by resolved
    path): writing one would destroy or hide another."""
    named = {"--input": input_path, "--output": output_path, "--rejects": rejects_path}
    for (a, pa), (b, pb) in itertools.combinations(named.items(), 2):
        same = pa.resolve() == pb.resolve() or (pa.exists() and pb.exists() and os.path.samefile(pa, pb))
        if same:
            raise InputFormatError(f"{a} and {b} are the same file ({pa}); give {b} another path")
    for name, path in (("--output", output_path), ("--rejects", rejects_path)):
        if not path.resolve().parent.is_dir():
            raise InputFormatError(f"{name} {path}: no folder {path.resolve().parent}")


def _open_temp(path: Path):
    """A new text file beside ``path`` under a hidden temporary name, with the mode
    any new file gets under the umask (``mkstemp``'s 0600 would survive the rename)."""
    return open(temp_path_beside(path), "x", newline="", encoding="utf-8")


@contextmanager
def stdin_as_file(beside: Path):
    """Standard input copied to a temporary file beside ``beside`` (the output),
    removed at the end: the input is read twice (its format detected, then scored),
    which a pipe cannot be. Raises :class:`OutputFailed` if the copy cannot be written."""
    if not beside.resolve().parent.is_dir():
        raise UsageError(f"--output {beside}: no folder {beside.resolve().parent}")
    copy = temp_path_beside(beside)
    try:
        out = open(copy, "xb")  # a name no file has: only what this call created is removed below
    except OSError as err:
        raise OutputFailed(f"{err.strerror or err} while creating {copy} for standard input") from err
    try:
        try:
            with out:
                shutil.copyfileobj(sys.stdin.buffer, out)
        except OSError as err:
            raise OutputFailed(f"{err.strerror or err} while copying standard input to {copy}") from err
        yield copy
    finally:
        copy.unlink(missing_ok=True)


@contextmanager
def replace_on_success(*paths: Path):
    """Text handles to temporary files beside ``paths``, renamed onto them only
    if the block ends without an error and every one of them was written out
    (closed): all the outputs are replaced, or none is (an existing file is never
    emptied). The temporaries are removed on every error."""
    temps = []
    try:
        for path in paths:
            temps.append(_open_temp(path))
        yield temps
        for temp in temps:
            temp.close()  # a full disk fails here, at the last flush, before any rename
        for temp, path in zip(temps, paths):
            os.replace(temp.name, path)
    finally:
        for temp in temps:
            with suppress(OSError):  # the error being raised is the one to report
                temp.close()
            Path(temp.name).unlink(missing_ok=True)


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""A spreadsheet reads a cell that starts with one of these as a formula (OWASP, CSV injection)."""


def spreadsheet_safe(text: str) -> str:
    """``text`` with a ``'`` in front if it starts with one of :data:`FORMULA_STARTS`
    or with ``'`` itself, so that a spreadsheet shows it as text instead of running
    it, and removing exactly one leading ``'`` from every field that has one gives
    the text back."""
    return "'" + text if text.startswith((*FORMULA_STARTS, "'")) else text


def score_rows(model, tokenizer, rows: Iterable[Row], scores, rejects, counts: Counts, *, threshold: float,
               max_chars: int, window: int, shard: DistInfo = DistInfo(), **predict_kwargs) -> None:
    """Score ``rows`` into the CSV writers ``scores`` and ``rejects``, ``window`` rows at a time.

    Each window is read, screened and scored as one
    :func:`kd.eval.inference.predict_proba` call, which sorts its URLs by
    length into batches and gives the scores back in input order: at most
    ``window`` rows are held, however long the input. Under ``shard``
    (``torchrun``), this rank takes windows ``rank, rank + N, ...`` of the
    ``N = world_size``, and counts only the rows of those.
    """
    for k, chunk in enumerate(windows(rows, window)):
        if k % shard.world_size != shard.rank:
            continue
        counts.read += len(chunk)
        good = []
        for row in chunk:
            normalized, reason = (None, row.reason) if row.reason else screen_url(row.url, max_chars)
            if reason is None:
                good.append((row, row.url.strip(), normalized))
            else:
                rejects.writerow((row.line, spreadsheet_safe(reason), spreadsheet_safe(row.content)))
                counts.rejected += 1
        probs = predict_proba(model, tokenizer, [n for _, _, n in good], normalize=False, **predict_kwargs) if good else []
        for (row, url, normalized), p in zip(good, probs):
            if not 0 <= p <= 1:  # NaN too
                rejects.writerow((row.line, f"the model gave probability {p}", spreadsheet_safe(row.content)))
                counts.rejected += 1
                counts.failed += 1
                continue
            label = "phishing" if p >= threshold else "legitimate"
            scores.writerow((row.line, spreadsheet_safe(url), spreadsheet_safe(normalized), label, float(p)))
            counts.scored += 1


def join_parts(parts: list[Path], out, header: tuple[str, ...]) -> None:
    """Write ``header`` and the CSV rows of every part to the handle ``out``,
    merged by line number (each part is in input order, and no line is in two)."""
    handles = [part.open(newline="", encoding="utf-8") for part in parts]
    try:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(heapq.merge(*(csv.reader(h) for h in handles), key=lambda row: int(row[0])))
    finally:
        for handle in handles:
            handle.close()


def score_file(
    model,
    tokenizer,
    input_path: str | Path,
    output_path: str | Path,
    rejects_path: str | Path,
    *,
    threshold: float = 0.5,
    column: str | None = None,
    fmt: str = "auto",
    max_chars: int = DEFAULT_MAX_CHARS,
    chunk_rows: int = CHUNK_ROWS,
    shard: DistInfo = DistInfo(),
    progress: bool | None = None,
    **predict_kwargs,
) -> Counts:
    """Score every row of ``input_path`` into ``output_path`` (CSV with
    :data:`SCORE_COLUMNS`) or write it to ``rejects_path`` (:data:`REJECT_COLUMNS`).

    Rows are read, length-sorted and scored ``chunk_rows`` at a time
    (:func:`score_rows`), so memory does not grow with the file;
    ``predict_kwargs`` go to :func:`kd.eval.inference.predict_proba`
    (``batch_size``, ``max_length``, ``autocast_dtype``: the model's scoring
    precision). Both outputs are written to temporary files and renamed into
    place at the end. Under ``torchrun`` (``shard`` with ``world_size`` N),
    every rank reads the file, scores its share of the windows into part files
    beside the output, and rank 0 joins the parts in input order; every rank
    returns the counts summed over all ranks. ``progress=None`` shows a bar
    (rank 0's) only on a terminal.
    """
    from tqdm.auto import tqdm

    input_path, output_path, rejects_path = Path(input_path), Path(output_path), Path(rejects_path)
    check_paths(input_path, output_path, rejects_path)
    fmt = input_format(input_path, fmt, column)
    counts = Counts()
    show = progress if shard.is_main else False
    kwargs = dict(threshold=threshold, max_chars=max_chars, window=chunk_rows, shard=shard, **predict_kwargs)
    with (
        open_input(input_path) as (source, raw_file),
        tqdm(total=input_path.stat().st_size, unit="B", unit_scale=True, desc="scoring",
             disable=None if show is None else not show) as bar,
    ):
        def lines():
            for raw in source:
                bar.update(raw_file.tell() - bar.n)  # the file's bytes, also when gzip or UTF-16
                yield raw

        rows = read_rows(lines(), fmt, Columns(url=column, hint=COLUMN_HINT), where=input_path)
        if not shard.enabled:
            with replace_on_success(output_path, rejects_path) as (out, rej):
                scores, rejects = csv.writer(out), csv.writer(rej)
                scores.writerow(SCORE_COLUMNS)
                rejects.writerow(REJECT_COLUMNS)
                score_rows(model, tokenizer, rows, scores, rejects, counts, **kwargs)
            return counts
        parts = {path: [path.resolve().parent / f".{path.name}.part-{r}-of-{shard.world_size}.tmp"
                        for r in range(shard.world_size)] for path in (output_path, rejects_path)}
        try:
            with (parts[output_path][shard.rank].open("w", newline="", encoding="utf-8") as out,
                  parts[rejects_path][shard.rank].open("w", newline="", encoding="utf-8") as rej):
                score_rows(model, tokenizer, rows, csv.writer(out), csv.writer(rej), counts, **kwargs)
            # Summed before anything is renamed into place: a collective that fails leaves the outputs
            # as they were. Every rank has written its parts once it takes part in the sum.
            total = all_reduce_sum(torch.tensor([counts.read, counts.scored, counts.rejected, counts.failed]), shard)
            if shard.is_main:
                with replace_on_success(output_path, rejects_path) as (out, rej):
                    join_parts(parts[output_path], out, SCORE_COLUMNS)
                    join_parts(parts[rejects_path], rej, REJECT_COLUMNS)
            barrier(shard)
        finally:
            for part in (parts[output_path][shard.rank], parts[rejects_path][shard.rank]):
                part.unlink(missing_ok=True)
    return Counts(*total.tolist())


def print_table(model, tokenizer, urls: list[str], threshold: float, max_chars: int, **predict_kwargs) -> int:
    """Score ``urls`` and print probability, label and URL per line (rejects with
    their reason). Returns how many the model gave no probability in [0, 1]."""
    screened = [screen_url(u, max_chars) for u in urls]
    good = [normalized for normalized, reason in screened if reason is None]
    probs = iter(predict_proba(model, tokenizer, good, normalize=False, **predict_kwargs))
    failed = 0
    print(f"{'probability':>11}  {'label':<10}  url")
    for url, (_, reason) in zip(urls, screened):
        p = next(probs) if reason is None else None
        if p is not None and not 0 <= p <= 1:
            reason, failed = f"the model gave probability {p}", failed + 1
        if reason is None:
            print(f"{p:>11.4f}  {'phishing' if p >= threshold else 'legitimate':<10}  {url}")
        else:
            print(f"{'-':>11}  {'rejected':<10}  {url[:EXCERPT_CHARS]!r}: {reason}")
    return failed


def check_onnx_options(args: argparse.Namespace) -> None:
    """Refuse the options that an ONNX folder (``kd.export``) cannot honour: it
    scores on the CPU with ONNX Runtime, in the precision it was exported in."""
    if args.precision is not None:
        raise UsageError(f"{args.model} is an ONNX export, scored in the precision it was exported in; "
                         "drop --precision (python -m kd.export --int8 writes an int8 one)")
    if args.compile:
        raise UsageError(f"{args.model} is an ONNX export, scored by ONNX Runtime: drop --compile")
    if args.device not in (None, "cpu"):
        raise UsageError(f"{args.model} is an ONNX export, scored by ONNX Runtime on the CPU: "
                         f"drop --device {args.device}")


def build_parser() -> argparse.ArgumentParser:
    from models.quantized import PRECISIONS

    parser = argparse.ArgumentParser(
        prog="python -m kd.predict",
        description="""\
Score URLs as phishing or legitimate with a saved classifier folder: a teacher,
a student, a quantized model written by quantize.py (its precision is read
from the folder), or an ONNX export written by kd.export (scored on the CPU
with ONNX Runtime). URLs are normalised as in training: HTML-entity residue
decoded; scheme, leading 'www.' and trailing '/' removed; host lower-cased.
label is 'phishing' when probability_phishing >= threshold.""",
        epilog="""\
rows that cannot be scored are never dropped silently: an empty line, bytes
that are not valid UTF-8, a URL longer than --max-chars characters, control
characters (NUL, tab, bidi and zero-width marks, ...), a null placeholder
(null, None, NaN), nothing left after normalisation, a CSV row that does not
parse, lacks the column or holds a quoted field spanning lines, a JSON line
that does not parse or holds no URL.
With --input they go to --rejects with their line number (1-based, counting
blank lines and a CSV header) and the reason; stderr gets a summary of rows
read / scored / rejected. Scores keep the input order. The file is streamed in
windows of --chunk-rows rows: each window's URLs are sorted by length into
batches (little padding) and their scores written back in input order, so
memory stays bounded however long the file; a progress bar shows on a
terminal. Both files are
written under temporary names and renamed into place when the run ends, both
or neither; the input, output and rejects must be three different files.

spreadsheets: a URL, normalized URL, reason or content that starts with =, +,
-, @, a tab or a carriage return (which a spreadsheet runs as a formula), or
with ', is written with a ' in front (OWASP's advice on CSV injection); to get
the text back, remove one leading ' from every field that starts with one, e.g.
url[1:] if url.startswith("'") else url.

URLs are scored in the precision recorded with the threshold (scoring_precision
in MODEL/metrics.json: e.g. bf16 autocast when training evaluated that way).

exit status: 0 when every row was scored or rejected for its content, 1 when
the model gave a probability outside [0, 1] (NaN) for some row (rejected with
that reason) or a file could not be read or written (a full or read-only disk:
one line, and neither output is replaced), 2 for a usage or input-format error
(nothing is written).

several processes (CPU cores or GPUs): torchrun --nproc_per_node N -m kd.predict
--input ... shares the windows out among N processes (one GPU each, when there
are GPUs); each writes its part beside the output and rank 0 joins them in
input order, into the same files as one process would write.

examples:
  python -m kd.predict --model runs/student http://paypal.com.verify.xyz/login
  python -m kd.predict --model runs/student-nf4 --input urls.txt --output scores.csv
  python -m kd.predict --model runs/student-onnx-int8 --input urls.txt --output scores.csv   # kd.export --int8
  python -m kd.predict --model runs/teacher --input data.csv --column link --output scores.csv
  grep paypal urls.txt | python -m kd.predict --model runs/student --input - --output scores.csv
  torchrun --nproc_per_node 2 -m kd.predict --model runs/student --input urls.txt --output scores.csv""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("urls", nargs="*", metavar="URL",
                        help="URLs to score; prints a table (probability, label, url) on stdout")
    parser.add_argument("--model", required=True, metavar="DIR",
                        help="model folder (save_pretrained + tokenizer)")
    parser.add_argument("--input", type=Path, metavar="FILE",
                        help="file to score, or - for standard input (copied to a temporary file beside "
                             "--output first, which must then be given): one URL per line, a CSV with a "
                             "header, or JSON lines (see --format); UTF-8, UTF-16 with a byte-order mark, or "
                             "either gzip-compressed (detected from the bytes); a regular file, not a pipe")
    parser.add_argument("--output", type=Path, metavar="CSV",
                        help="scores CSV to write (required with --input); columns: "
                             + ", ".join(SCORE_COLUMNS))
    parser.add_argument("--rejects", type=Path, metavar="CSV",
                        help="rejects CSV (line, reason, first 200 characters of the row); "
                             "default: OUTPUT with the suffix .rejects.csv")
    parser.add_argument("--format", dest="fmt", choices=("auto", *STREAM_FORMATS), default="auto",
                        help="input format; auto (default) detects it as training data is read: JSON "
                             "lines if the first line is a JSON object (or the name ends in .jsonl), CSV "
                             "if it is a header with a URL column, else one URL per line; a file that "
                             "could be read two ways is refused with a message naming --format")
    parser.add_argument("--column",
                        help="the CSV column or JSON key holding the URL (default: the first of "
                             + ", ".join(URL_COLUMNS) + ", any case)")
    parser.add_argument("--threshold", type=probability,
                        help="decision threshold in [0, 1] on probability_phishing; default: 'threshold' "
                             "from MODEL/metrics.json if present (training writes it), else 0.5")
    parser.add_argument("--max-chars", type=positive_int, default=DEFAULT_MAX_CHARS,
                        help=f"reject URLs longer than this many characters (default: {DEFAULT_MAX_CHARS})")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="load in this precision (default: as saved; a plain fp32/bf16 folder "
                             "can be quantized on the fly, a quantized folder loads only as itself)")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda (default: cuda if available)")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="URLs per forward pass (default: 256)")
    parser.add_argument("--max-length", type=token_length, default=128,
                        help="truncate to this many tokens, as in training (default: 128)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model with inductor's weight freezing (kd.eval.inference."
                             "scoring_model): the first batches compile (15 to 35 s on a 2-core CPU), "
                             "later ones run faster; for long files")
    parser.add_argument("--chunk-rows", type=positive_int, default=CHUNK_ROWS,
                        help="rows read, sorted by length and scored at a time (the window), bounding "
                             f"memory (default: {CHUNK_ROWS})")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; the exit status is described in the ``--help`` epilog.
    ``--input -`` scores a copy of standard input (:func:`stdin_as_file`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if str(args.input) != "-" or args.urls or not args.output:
        return run(parser, args)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        parser.error("under torchrun give --input FILE (standard input reaches one process only)")
    with stdin_as_file(args.output) as copy:
        args.input = copy
        return run(parser, args)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """What :func:`main` does with the parsed ``args``."""
    if bool(args.urls) == bool(args.input):
        parser.error("give either URLs or --input FILE (not both)")
    if args.urls and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        parser.error("under torchrun give --input FILE (URLs on the command line are scored by one process)")
    if args.input:
        if not args.output:
            parser.error("--input needs --output")
        rejects = args.rejects or args.output.with_suffix(".rejects.csv")
        try:  # before loading the model: a usage error costs nothing and writes nothing
            check_input_file(args.input)
            check_paths(args.input, args.output, rejects)
            fmt = input_format(args.input, args.fmt, args.column)
        except InputFormatError as err:
            raise UsageError(str(err)) from err

    from transformers.utils import logging as hf_logging

    from models.onnx import is_onnx_folder, load_onnx_classifier
    from models.quantized import load_classifier, saved_precision

    hf_logging.disable_progress_bar()  # per-tensor "Loading weights" bars; ours is the one to watch
    shard = init_distributed()
    try:
        device = args.device or (default_device(shard) if shard.enabled else None)
        onnx = is_onnx_folder(args.model)
        try:
            check_max_length(args.model, args.max_length)
            if onnx:
                check_onnx_options(args)
                model, tokenizer = load_onnx_classifier(args.model)
            else:
                model, tokenizer = load_classifier(args.model, args.precision, device)
                saved = saved_precision(args.model)
        except ValueError as err:  # an unloadable folder or format, or a precision the device cannot run
            raise UsageError(str(err)) from err
        if shard.is_main and not has_url_normalizer(tokenizer):
            print(f"note: the tokenizer of {args.model} does not normalise URLs, so transformers.pipeline on it scores "
                  f"raw URLs differently from kd.predict; add the normalisation with: {UPGRADE_COMMAND} {args.model}",
                  file=sys.stderr)
        if onnx:
            threshold, saved, source = saved_scoring(args.model)
            scoring = f"ONNX Runtime {model.precision}"
            if source != "default" and model.precision != saved and shard.is_main:
                print(f"note: the saved threshold was chosen for the {saved} model, this is its ONNX {model.precision} "
                      "export", file=sys.stderr)
        else:
            model = scoring_model(model, compile=args.compile)
            threshold, scoring, source = saved_scoring(args.model, default_precision=saved)
            if args.precision not in (None, saved):  # quantized on the fly: the variant's own precision
                scoring = args.precision
                if shard.is_main:
                    print(f"note: the saved threshold was chosen for the {saved} model, this is its {scoring} variant",
                          file=sys.stderr)
        if args.threshold is not None:
            threshold, source = args.threshold, "--threshold"
        elif source == "default" and (Path(args.model) / "run_info.json").is_file():
            # A training checkpoint gets its threshold from the run's final evaluation: 0.5
            # would give other verdicts than the run's, silently.
            raise UsageError(f"{args.model} is a training checkpoint without a threshold (none in metrics.json): its run "
                             "stopped before the final evaluation; finish it with --resume, or name one with --threshold")
        if shard.is_main:
            print(f"threshold {threshold:g} ({source}), scoring in {scoring}"
                  + (f", {shard.world_size} processes" if shard.enabled else ""), file=sys.stderr)
        predict_kwargs = {"batch_size": args.batch_size, "max_length": args.max_length,
                          "autocast_dtype": None if onnx else scoring_autocast(scoring)}
        if args.urls:
            return 1 if print_table(model, tokenizer, args.urls, threshold, args.max_chars, **predict_kwargs) else 0

        try:
            counts = score_file(
                model, tokenizer, args.input, args.output, rejects, threshold=threshold,
                column=args.column, fmt=fmt, max_chars=args.max_chars, chunk_rows=args.chunk_rows, shard=shard,
                **predict_kwargs,
            )
        except (InputFormatError, DataError) as err:  # e.g. the file changed since it was checked
            raise UsageError(str(err)) from err
        except (OSError, EOFError, zlib.error) as err:  # a full or read-only disk, a failing device, broken gzip
            what = getattr(err, "strerror", None) or err
            where = f" ({err.filename})" if getattr(err, "filename", None) else ""
            raise OutputFailed(f"{what}{where} while scoring {args.input} into {args.output} and {rejects}; "
                               "neither was written or replaced") from err
        if not shard.is_main:
            return 1 if counts.failed else 0
        print(f"read {counts.read} rows: scored {counts.scored} -> {args.output}, "
              f"rejected {counts.rejected} -> {rejects}", file=sys.stderr)
        if counts.failed:
            print(f"error: the model gave no probability in [0, 1] for {counts.failed} rows (see {rejects})",
                  file=sys.stderr)
            return 1
        return 0
    finally:
        close_distributed()


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="python -m kd.predict"))
