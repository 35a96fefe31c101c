"""kd/data/reader.py, the one reader of URL files (issue 26 item 4): a file that
trains also scores, row for row, and the other way round. The table in
tests/README.md lists each case."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
from conftest import read_csv_rows

import kd.predict
from kd.data.multisource import read_metadata
from kd.data.sources import SourceSpec, read_source
from kd.data.splits import DataReport, DataSplits, Examples, read_split_file, write_split_file

CSV_TEXT = (
    "\ufeffurl,label\r\n"                                        # 1: header after a byte-order mark
    "http://a.com/x,phishing\n"                                  # 2
    "\n"                                                         # 3: blank
    '"http://b.com/a,b",legitimate\n'                            # 4: a quoted comma
    '"http://evil.tk/a\nsecond-line.com/b",phishing\n'           # 5-6: a quoted field across lines
    "   \n"                                                      # 7: blank
    '"http://c.com/q"x,phishing\n'                               # 8: text after a closing quote
    "null,phishing\n"                                            # 9: a null placeholder
    "http://d.com,legitimate\n"                                  # 10
)
JSONL_TEXT = (
    '\ufeff{"url": "http://a.com/x", "label": 1}\n'              # 1: after a byte-order mark
    "\n"                                                         # 2: blank
    '{"url": 3, "label": 0}\n'                                   # 3: not a string
    '{"link": "http://b.com", "label": 0}\n'                     # 4: another URL key
    '{"page": "http://c.com", "label": 1}\n'                     # 5: no URL key
    '{"url": "http://e.com/\\u200b", "label": 1}\n'              # 6: a zero-width space
    '{"URL": "http://f.com/y", "label": "legitimate"}'           # 7: any case, no final line end
)


def train_and_score(path, tmp_path, monkeypatch):
    """``(training rows, training report, scored rows, rejected lines)`` of one file
    read by :func:`read_source` and scored by ``kd.predict`` (every URL 0.25)."""
    rows, report = read_source(SourceSpec(str(path)))
    monkeypatch.setattr(kd.predict, "predict_proba", lambda model, tok, urls, **kw: np.full(len(urls), 0.25))
    counts = kd.predict.score_file(None, None, path, tmp_path / "s.csv", tmp_path / "r.csv")
    scored = [(int(r["line"]), r["url"]) for r in read_csv_rows(tmp_path / "s.csv")]
    rejected = [int(r["line"]) for r in read_csv_rows(tmp_path / "r.csv")]
    assert counts.read == report.rows_read and counts.rejected == len(rejected)
    return rows, report, scored, rejected


@pytest.mark.parametrize("encode", [
    str.encode,
    lambda text: gzip.compress(text.encode()),
    lambda text: text.removeprefix("\ufeff").encode("utf-16"),
], ids=["utf-8", "gzip", "utf-16"])
def test_a_csv_file_gives_training_and_scoring_the_same_rows(tmp_path, monkeypatch, encode):
    path = tmp_path / "d.csv"
    path.write_bytes(encode(CSV_TEXT))
    rows, report, scored, rejected = train_and_score(path, tmp_path, monkeypatch)
    assert [(line, url) for line, url, _ in rows] == scored == [
        (2, "http://a.com/x"), (4, "http://b.com/a,b"), (10, "http://d.com")]
    assert [label for *_, label in rows] == [1, 0, 0]
    assert rejected == [3, 5, 6, 7, 8, 9]
    assert report.skipped == {"blank_line": 2, "field_spans_lines": 2, "malformed_csv": 1, "null_url": 1}


def test_a_json_lines_file_gives_training_and_scoring_the_same_rows(tmp_path, monkeypatch):
    path = tmp_path / "d.jsonl"
    path.write_bytes(JSONL_TEXT.encode())
    rows, report, scored, rejected = train_and_score(path, tmp_path, monkeypatch)
    assert [(line, url) for line, url, _ in rows] == scored == [
        (1, "http://a.com/x"), (4, "http://b.com"), (7, "http://f.com/y")]
    assert [label for *_, label in rows] == [1, 0, 0]
    assert rejected == [2, 3, 5, 6]
    assert report.skipped == {"blank_line": 1, "not_a_string": 1, "missing_field": 1, "control_characters": 1}


def test_the_split_file_reads_back_as_written(tmp_path):
    urls = ["a.com/x,y", 'b.com/"q"', "c.com"]
    splits = DataSplits(Examples(urls[:2], np.array([1, 0])), Examples([], np.array([], dtype=int)),
                        Examples(urls[2:], np.array([1])), {}, DataReport())
    write_split_file(splits, tmp_path / "splits.csv")
    assert list(read_split_file(tmp_path / "splits.csv")) == [
        ("train", 1, "a.com/x,y"), ("train", 0, 'b.com/"q"'), ("test", 1, "c.com")]


def test_metadata_rows_are_read_as_the_urls_are(tmp_path):
    path = tmp_path / "jpcert.csv"
    path.write_bytes("\ufeffdate,url,brand,label\n2019/01/04 10:12:00,http://www.x.jp/a,Bank,phishing\n"
                     "2019/01/05 00:00:00\n\n2020/02/02 00:00:00,http://y.jp,\"Shop, Inc\",phishing\n".encode())
    assert read_metadata(path) == {"x.jp/a": ("2019-01-04", "Bank"), "y.jp": ("2020-02-02", "Shop, Inc")}
