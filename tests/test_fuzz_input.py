"""Fuzz kd.predict and the training-data reader with random bytes, random
CSV / JSON-lines shapes and random option values (issue 12).

kd.predict: a usage error exits 2 and writes nothing; otherwise every input
line is, exactly once, a score or a reject with its line number (a CSV header
line is the one exception), and exit 0 means every score is finite and in
[0, 1]. The reader: a :class:`DataError` or rows whose URLs pass the screening,
with every row read counted as used or skipped."""
import math
import tempfile
from pathlib import Path

import pytest
from conftest import read_csv_rows
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kd.errors import USAGE_STATUS, run_cli
from kd.predict import input_format, main
from kd.data.sources import DataError, SourceSpec, read_source, url_problem

FUZZ = settings(max_examples=300, derandomize=True, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

no_newline = st.binary(max_size=24).map(lambda b: b.replace(b"\n", b""))
url_like = st.sampled_from(["example.org", "http://paypal.com.x.tk/login", "null", "None", "https://", "  ",
                            "a.com/x,y", "http://a\tb.com", "http://a\x00b.com", "\ufeffurl", "x" * 50])
field = st.one_of(url_like, st.sampled_from(['"', '""', ",", "1", "phishing", "{", "}", "[1]", '"url"']))
csv_line = st.lists(field, min_size=1, max_size=3).map(lambda fs: ",".join(fs).encode())
json_line = st.one_of(
    st.builds(lambda u: ('{"url": "%s"}' % u).encode(), url_like),
    st.sampled_from([b'{"url": 3}', b'{"link": "example.org"}', b'"example.org"', b"[1, 2]", b"{", b"null"]),
)
lines = st.lists(st.one_of(no_newline, url_like.map(str.encode), csv_line, json_line, st.just(b"")), max_size=8)
headers = st.sampled_from([None, b"url,label", b"\xef\xbb\xbfurl", b"id,link", b"id,page"])


@st.composite
def input_files(draw):
    header = draw(headers)
    body = draw(lines)
    content = b"\n".join(([header] if header is not None else []) + body)
    if content and draw(st.booleans()):
        content += b"\n"
    return content, draw(st.sampled_from([".txt", ".csv", ".jsonl", ""]))


options = st.fixed_dictionaries({}, optional={
    "--batch-size": st.integers(0, 8).map(str),
    "--chunk-rows": st.integers(0, 6).map(str),
    "--max-chars": st.integers(0, 60).map(str),
    "--max-length": st.integers(6, 40).map(str),
    "--threshold": st.sampled_from(["0", "0.5", "0.7", "1", "-0.1", "1.5", "nan"]),
    "--format": st.sampled_from(["auto", "lines", "csv", "jsonl"]),
    "--column": st.sampled_from(["url", "link", "URL", "nope"]),
})


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A folder for the examples' files under pytest's own temporary root, which it
    prunes (hypothesis examples cannot take the function-scoped ``tmp_path``)."""
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(file=input_files(), opts=options)
def test_predict_accounts_for_every_line(tiny_classifier_dir, scratch, file, opts, capsys):
    content, suffix = file
    folder = Path(tempfile.mkdtemp(dir=scratch))
    source, output = folder / f"in{suffix}", folder / "out.csv"
    source.write_bytes(content)
    argv = ["--model", str(tiny_classifier_dir), "--input", str(source), "--output", str(output)]
    argv += [x for kv in opts.items() for x in kv]
    try:
        status = run_cli(main, argv)
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    if status == USAGE_STATUS:
        assert "error:" in capsys.readouterr().err
        event("usage error")
        assert not output.exists() and source.read_bytes() == content
        return
    event("scored")
    assert status == 0 and source.read_bytes() == content
    scores, rejects = read_csv_rows(output), read_csv_rows(folder / "out.rejects.csv")
    for row in scores:
        p = float(row["probability_phishing"])
        assert math.isfinite(p) and 0 <= p <= 1
    numbers = [int(r["line"]) for r in scores + rejects]
    assert len(numbers) == len(set(numbers))  # each line once
    all_lines = set(range(1, len(content.split(b"\n")) + 1 - content.endswith(b"\n"))) if content else set()
    missing = all_lines - set(numbers)
    assert set(numbers) <= all_lines
    if missing:  # only the CSV header, the first non-blank line
        first = min(n for n in all_lines if content.split(b"\n")[n - 1].strip(b"\xef\xbb\xbf \t\r"))
        assert missing == {first}
        assert input_format(source, opts.get("--format", "auto"), opts.get("--column")) == "csv"


@FUZZ
@given(file=input_files(), fmt=st.sampled_from(["auto", "lines", "csv", "json", "jsonl"]),
       label=st.sampled_from([None, "phishing"]), max_chars=st.integers(1, 60))
def test_reader_fails_clearly_or_screens_every_row(scratch, file, fmt, label, max_chars):
    content, suffix = file
    path = Path(tempfile.mkdtemp(dir=scratch)) / f"d{suffix}"
    path.write_bytes(content)
    try:
        rows, report = read_source(SourceSpec(str(path), format=fmt, label=label), max_url_chars=max_chars)
    except DataError:
        return
    assert report.rows_read == len(rows) + sum(report.skipped.values())
    n_lines = len(content.split(b"\n"))
    for line, url, y in rows:
        assert url_problem(url, max_chars) is None and y in (0, 1)
        assert 1 <= line <= n_lines or fmt == "json"
