"""Every loader and every kind of bad input: a clear error or a counted skip."""
import json

import pandas as pd
import pytest

from conftest import write_csv
from kd.data.sources import DataError, SourceSpec, parse_label, read_source


def read(path, **spec):
    return read_source(SourceSpec(str(path), **spec))


def test_hannousse_format(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("url,length_url,status\nhttp://a.com,12,legitimate\nhttp://b.ru/login,17,phishing\n")
    rows, report = read(path)
    assert [(u, y) for _, u, y in rows] == [("http://a.com", 0), ("http://b.ru/login", 1)]
    assert report.rows_read == 2 and report.rows_used == 2


def test_phishtank_format_is_all_phishing(tmp_path):
    path = tmp_path / "online-valid.csv"
    path.write_text("phish_id,url,phish_detail_url,submission_time,verified,verification_time,online,target\n"
                    "1,http://x.ru/a,http://pt/1,t,yes,t,yes,Other\n")
    rows, _ = read(path)
    assert rows == [(2, "http://x.ru/a", 1)]


def test_lines_format_takes_the_given_label(tmp_path):
    path = tmp_path / "benign.csv"
    path.write_bytes(b"http://a.com/x\r\nhttp://b.com/y\r\n")
    rows, _ = read(path, label="legitimate")
    assert rows == [(1, "http://a.com/x", 0), (2, "http://b.com/y", 0)]


def test_lines_format_without_label_is_an_error(tmp_path):
    path = tmp_path / "urls.txt"
    path.write_text("http://a.com\n")
    with pytest.raises(DataError, match="label=phishing or label=legitimate"):
        read(path)


@pytest.mark.parametrize(
    "column, values",
    [("label", ["0", "1"]), ("class", ["benign", "malicious"]), ("type", ["good", "bad"]), ("Status", ["legitimate", "phishing"])],
)
def test_generic_csv_label_spellings(tmp_path, column, values):
    path = write_csv(tmp_path / "g.csv", [("http://a.com", values[0]), ("http://b.com", values[1])], header=("URL", column))
    rows, _ = read(path)
    assert [y for *_, y in rows] == [0, 1]


def test_json_list_of_objects_and_of_strings(tmp_path):
    objects = tmp_path / "o.json"
    objects.write_text(json.dumps([{"url": "http://a.com", "label": "phishing"}, {"url": "http://b.com", "label": 0}]))
    assert [y for *_, y in read(objects)[0]] == [1, 0]
    strings = tmp_path / "s.json"
    strings.write_text(json.dumps(["http://a.com", "http://b.com"]))
    assert [y for *_, y in read(strings, label="phishing")[0]] == [1, 1]


def test_jsonl_and_parquet(tmp_path):
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"link": "http://a.com", "target": "bad"}\n\n{"link": "http://b.com", "target": "good"}\n')
    assert [(u, y) for _, u, y in read(jsonl)[0]] == [("http://a.com", 1), ("http://b.com", 0)]
    parquet = tmp_path / "d.parquet"
    pd.DataFrame({"url": ["http://a.com", "http://b.com"], "status": ["phishing", "legitimate"]}).to_parquet(parquet)
    assert [y for *_, y in read(parquet)[0]] == [1, 0]


def test_hub_dataset_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="hannousse/dataset_phishing.csv"):
        read_source(SourceSpec("hf:pirocheto/phishing-url"))


def test_spec_parsing():
    spec = SourceSpec.parse("iscx_url2016/Benign_list_big_final.csv:label=legitimate,format=lines")
    assert (spec.path, spec.label, spec.format) == ("iscx_url2016/Benign_list_big_final.csv", "legitimate", "lines")
    assert SourceSpec.parse("C:/data/x.csv").path == "C:/data/x.csv"
    with pytest.raises(DataError, match="known"):
        SourceSpec.from_dict({"path": "x.csv", "colour": "red"})
    with pytest.raises(DataError, match="unknown format"):
        SourceSpec("x.csv", format="xml")


# --- bad input ---------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match="not found: .*nope.csv"):
        read(tmp_path / "nope.csv")


def test_missing_column_lists_the_columns(tmp_path):
    path = write_csv(tmp_path / "c.csv", [("http://a.com", "1")], header=("address_of_page", "label"))
    with pytest.raises(DataError, match=r"no url column.*address_of_page"):
        read(path)
    path = write_csv(tmp_path / "d.csv", [("http://a.com", "1")], header=("url", "verdict"))
    with pytest.raises(DataError, match=r"no label column.*verdict"):
        read(path)


def test_unknown_label_value_names_file_and_line(tmp_path):
    path = write_csv(tmp_path / "c.csv", [("http://a.com", "phishing"), ("http://b.com", "suspicious")])
    with pytest.raises(DataError, match=r"c.csv, line 3: unknown label value 'suspicious'"):
        read(path)


def test_empty_nan_and_missing_label_rows_are_counted(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("url,label\nhttp://a.com,1\n,1\n   ,0\nNaN_is_text_here,\nhttp://b.com,0\n")
    rows, report = read(path)
    assert [u for _, u, _ in rows] == ["http://a.com", "http://b.com"]
    assert report.skipped == {"empty_url": 2, "missing_label": 1}
    parquet = tmp_path / "n.parquet"
    pd.DataFrame({"url": ["http://a.com", None, float("nan")], "label": [1, 0, 1]}).to_parquet(parquet)
    rows, report = read(parquet)
    assert len(rows) == 1 and report.skipped["empty_url"] == 2


def test_non_utf8_rows_are_counted_not_decoded_wrongly(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes(b"url,label\nhttp://a.com/caf\xe9,1\nhttp://b.com,0\n")
    rows, report = read(path)
    assert [u for _, u, _ in rows] == ["http://b.com"]
    assert report.skipped == {"invalid_utf8": 1}
    lines = tmp_path / "l.txt"
    lines.write_bytes(b"http://ok.com\nhttp://bad\xff\xfe.com\n")
    rows, report = read(lines, label="phishing")
    assert len(rows) == 1 and report.skipped == {"invalid_utf8": 1}


def test_very_long_url_is_counted(tmp_path):
    path = write_csv(tmp_path / "c.csv", [("http://a.com/" + "x" * 100_000, "1"), ("http://b.com", "0")])
    rows, report = read_source(SourceSpec(str(path)), max_url_chars=2048)
    assert len(rows) == 1 and report.skipped == {"too_long": 1}


def test_source_with_no_usable_rows_is_an_error(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("url,label\n,1\n")
    with pytest.raises(DataError, match="no usable rows"):
        read(path)
    empty = tmp_path / "e.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        read(empty, format="csv")


def test_parse_label():
    assert parse_label("Phishing", where="x") == 1 and parse_label(0.0, where="x") == 0 and parse_label("1.0", where="x") == 1
    with pytest.raises(DataError, match="where: unknown label value 2"):
        parse_label(2, where="where")
