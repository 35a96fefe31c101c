"""Hostile and malformed input to kd.predict and the training-data readers
(issue 12 items 1, 4, 5, 9); the table in tests/README.md lists each case."""

import numpy as np
import pytest
from conftest import read_csv_rows

from kd.errors import USAGE_STATUS, run_cli
from kd.eval.inference import predict_tokenized
from kd.predict import main
from kd.data.sources import DataError, SourceSpec, read_source


def predict(tiny_classifier_dir, *args):
    """kd.predict's exit status as a process sees it: a usage error (``run_cli``'s
    status 2) exits through ``SystemExit(2)``, as argparse's own errors do."""
    status = run_cli(main, ["--model", str(tiny_classifier_dir), *map(str, args)])
    if status == USAGE_STATUS:
        raise SystemExit(status)
    return status


# issue 12 item 1: kd.predict never truncates its own input or loses rejects

@pytest.mark.parametrize("same", [("--output",), ("--rejects",), ("--output", "--rejects")])
def test_input_named_as_an_output_is_refused_and_left_intact(tiny_classifier_dir, tmp_path, capsys, same):
    source = tmp_path / "u.txt"
    source.write_text("example.org\nexample.com\n")
    args = {"--output": tmp_path / "s.csv", "--rejects": tmp_path / "r.csv"}
    args.update({name: tmp_path / "." / "u.txt" for name in same})  # the same file by another spelling
    with pytest.raises(SystemExit) as exit_:
        predict(tiny_classifier_dir, "--input", source, *[x for kv in args.items() for x in kv])
    assert exit_.value.code == 2 and "are the same file" in capsys.readouterr().err
    assert source.read_text() == "example.org\nexample.com\n"


def test_rescoring_a_rejects_file_with_the_default_rejects_path_is_refused(tiny_classifier_dir, tmp_path):
    rejects = tmp_path / "s.rejects.csv"
    rejects.write_text("line,reason,content\n2,empty,\n")
    with pytest.raises(SystemExit):
        predict(tiny_classifier_dir, "--input", rejects, "--output", tmp_path / "s.csv")
    assert rejects.read_text() == "line,reason,content\n2,empty,\n"


def test_output_equal_to_rejects_is_refused(tiny_classifier_dir, tmp_path, capsys):
    source = tmp_path / "u.txt"
    source.write_text("example.org\n\n")
    with pytest.raises(SystemExit):
        predict(tiny_classifier_dir, "--input", source, "--output", tmp_path / "x.csv", "--rejects", tmp_path / "x.csv")
    assert "--output and --rejects are the same file" in capsys.readouterr().err


def test_an_existing_output_survives_a_failed_run(tiny_classifier_dir, tmp_path, monkeypatch):
    import kd.predict

    source = tmp_path / "u.txt"
    source.write_text("example.org\n")
    output, rejects = tmp_path / "s.csv", tmp_path / "r.csv"
    output.write_text("previous scores\n")
    rejects.write_text("previous rejects\n")

    def fail(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(kd.predict, "predict_proba", fail)
    with pytest.raises(RuntimeError):
        predict(tiny_classifier_dir, "--input", source, "--output", output, "--rejects", rejects)
    assert output.read_text() == "previous scores\n" and rejects.read_text() == "previous rejects\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "s.csv", "u.txt"]  # no temporary left


# issue 12 item 4: numeric options are validated before anything runs

@pytest.mark.parametrize("option, value", [
    ("--batch-size", "0"), ("--batch-size", "-3"), ("--max-chars", "0"), ("--max-length", "0"),
    ("--chunk-rows", "-1"), ("--threshold", "1.5"), ("--threshold", "-0.1"), ("--threshold", "nan"),
    ("--batch-size", "two"),
])
def test_bad_numeric_options_exit_2_with_the_option_named(tiny_classifier_dir, tmp_path, capsys, option, value):
    output = tmp_path / "s.csv"
    source = tmp_path / "u.txt"
    source.write_text("example.org\n")
    with pytest.raises(SystemExit) as exit_:
        predict(tiny_classifier_dir, "--input", source, "--output", output, option, value)
    assert exit_.value.code == 2 and f"argument {option}" in capsys.readouterr().err
    assert not output.exists()


@pytest.mark.parametrize("option", ["--batch-size", "--max-length"])
def test_evaluate_refuses_a_non_positive_option(option, capsys):
    from kd.evaluate import main as evaluate

    with pytest.raises(SystemExit) as exit_:
        evaluate(["--model", "unused", option, "0"])
    assert exit_.value.code == 2 and f"argument {option}" in capsys.readouterr().err


def test_scoring_with_batch_size_zero_is_an_error_not_garbage(tiny_classifier_dir):
    from kd.data.batching import tokenize
    from kd.data.splits import Examples
    from models.quantized import load_classifier

    model, tokenizer = load_classifier(tiny_classifier_dir)
    data = tokenize(Examples(["example.org"], [0]), tokenizer, 32)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        predict_tokenized(model, data, batch_size=0)


# issue 12 item 5: formats are detected from content and name, the same way for both readers

def test_jsonl_is_read_as_json_lines_with_line_numbers(tiny_classifier_dir, tmp_path):
    source = tmp_path / "u.jsonl"
    source.write_text('{"url": "example.org"}\n\n{"url": "example.com"\n"paypal.com.x.tk/login"\n{"id": 3}\n[1]\n')
    assert predict(tiny_classifier_dir, "--input", source, "--output", tmp_path / "s.csv") == 0
    scores, rejects = read_csv_rows(tmp_path / "s.csv"), read_csv_rows(tmp_path / "s.rejects.csv")
    assert [(r["line"], r["url"]) for r in scores] == [("1", "example.org"), ("4", "paypal.com.x.tk/login")]
    reasons = {r["line"]: r["reason"] for r in rejects}
    assert reasons["2"] == "empty" and reasons["3"].startswith("not valid JSON")
    assert reasons["5"] == "no 'URL' key in the object" and reasons["6"] == "a JSON list, not a URL string"


def test_csv_header_without_a_url_column_is_refused_not_scored(tiny_classifier_dir, tmp_path, capsys):
    source = tmp_path / "u.csv"
    source.write_text("id,page,label\n1,example.org,1\n")
    with pytest.raises(SystemExit) as exit_:
        predict(tiny_classifier_dir, "--input", source, "--output", tmp_path / "s.csv")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "no url column" in err and "--column" in err and "--format lines" in err
    assert not (tmp_path / "s.csv").exists()


def test_a_quoted_field_spanning_lines_rejects_each_of_its_lines(tiny_classifier_dir, tmp_path):
    source = tmp_path / "u.csv"
    source.write_text('url,label\nexample.org,0\n"http://evil.tk/a\nsecond-line.com/b",1\nexample.com,0\n')
    assert predict(tiny_classifier_dir, "--input", source, "--output", tmp_path / "s.csv") == 0
    scores, rejects = read_csv_rows(tmp_path / "s.csv"), read_csv_rows(tmp_path / "s.rejects.csv")
    assert [r["url"] for r in scores] == ["example.org", "example.com"]
    assert [(r["line"], r["reason"]) for r in rejects] == [
        ("3", "a quoted field spans lines 3-4 (a URL holds no line break)"),
        ("4", "a quoted field spans lines 3-4 (a URL holds no line break)")]


def test_training_csv_with_a_bom_is_read(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("\ufeffurl,label\nhttp://a.com,1\nhttp://b.com,0\n".encode())
    rows, _ = read_source(SourceSpec(str(path)))
    assert [(u, y) for _, u, y in rows] == [("http://a.com", 1), ("http://b.com", 0)]


@pytest.mark.parametrize("name, content, words", [
    ("d.csv", "id,page,label\n1,http://a.com,1\n", ["no url column", "url_column=", "format=lines"]),
    ("d.txt", "http://a.com,1\nhttp://b.com,0\n", ["label but no header", "format=lines"]),
    ("d.jsonl", "http://a.com\n", ["format=jsonl", "format=lines"]),
])
def test_an_ambiguous_training_file_is_refused_naming_format(tmp_path, name, content, words):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError) as err:
        read_source(SourceSpec(str(path), label="phishing"))
    for word in words:
        assert word in str(err.value)


def test_training_jsonl_errors_give_the_line_and_blank_lines_are_counted(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"url": "http://a.com", "label": 1}\n\n{"url": "http://b.com", "label": 0}\n')
    rows, report = read_source(SourceSpec(str(path)))
    assert [line for line, _, _ in rows] == [1, 3] and report.skipped == {"blank_line": 1}
    path.write_text('{"url": "http://a.com", "label": 1}\n\n\n{"url": 3, "label": }\n')
    with pytest.raises(DataError, match=r"d.jsonl, line 4: not valid JSON"):
        read_source(SourceSpec(str(path)))
    path.write_text('{"url": "http://a.com", "label": 1}\n\n"http://b.com"\n')
    with pytest.raises(DataError, match=r"line 3 is a bare URL"):
        read_source(SourceSpec(str(path)))


def test_blank_csv_lines_are_counted(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("url,label\nhttp://a.com,1\n\nhttp://b.com,0\n")
    _, report = read_source(SourceSpec(str(path)))
    assert report.rows_read == 3 and report.skipped == {"blank_line": 1}


# issue 12 item 9: NUL, tab and null placeholders are skips with a reason, in both readers

def test_training_rows_with_control_characters_or_null_are_skipped_with_a_reason(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b'url,label\nhttp://a.com,1\n"http://n\x00ul.com",1\n"http://t\tab.com",0\n'
                     b"null,1\nNone,0\nNULL,1\nhttp://b.com,0\n")
    rows, report = read_source(SourceSpec(str(path)))
    assert [u for _, u, _ in rows] == ["http://a.com", "http://b.com"]
    assert report.skipped == {"control_characters": 2, "null_url": 3}


def test_an_empty_training_file_says_so(tmp_path):
    for content in ("", "\n  \n"):
        path = tmp_path / "d.txt"
        path.write_text(content)
        with pytest.raises(DataError, match="empty file"):
            read_source(SourceSpec(str(path)))  # not "holds no labels"


def test_predict_rejects_the_same_rows_with_a_reason(tiny_classifier_dir, tmp_path):
    source = tmp_path / "u.txt"
    source.write_bytes(b"example.org\nn\x00ul.com\nt\tab.com\nnull\nNone\nexample.com\n")
    assert predict(tiny_classifier_dir, "--input", source, "--output", tmp_path / "s.csv") == 0
    assert [r["line"] for r in read_csv_rows(tmp_path / "s.csv")] == ["1", "6"]
    reasons = [r["reason"] for r in read_csv_rows(tmp_path / "s.rejects.csv")]
    assert reasons == ["contains control characters"] * 2 + [
        "a null placeholder (null), not a URL", "a null placeholder (None), not a URL"]


def test_predict_exits_1_when_the_model_gives_no_probability(tiny_classifier_dir, tmp_path, monkeypatch, capsys):
    import kd.predict

    monkeypatch.setattr(kd.predict, "predict_proba", lambda model, tok, urls, **kw: np.full(len(urls), np.nan))
    source = tmp_path / "u.txt"
    source.write_text("example.org\n\n")
    assert predict(tiny_classifier_dir, "--input", source, "--output", tmp_path / "s.csv") == 1
    assert read_csv_rows(tmp_path / "s.csv") == []
    assert [r["reason"] for r in read_csv_rows(tmp_path / "s.rejects.csv")] == ["empty", "the model gave probability nan"]
