"""kd/predict.py: the CLI on files with good and bad rows, and agreement with
the evaluation path (kd.eval.inference.predict_proba)."""
import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import save_tiny_classifier

from kd.eval.inference import predict_proba
from kd.predict import main, read_rows
from kd.data.urls import normalize_url
from models.quantized import load_classifier, save_quantized

GOOD = [
    "https://www.PayPal.com.verify-account.xyz/login/",
    "http://192.168.0.1/admin.php?x=1&amp;y=2",
    "example.org",
    "github.com/pytorch/pytorch/issues/1",
    "secure-login.apple.com.id-check.ru/",
]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return save_tiny_classifier(tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def nf4_dir(teacher_dir, tmp_path_factory):
    model, tokenizer = load_classifier(teacher_dir, "nf4")
    return save_quantized(model, tokenizer, tmp_path_factory.mktemp("nf4"))


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def expected_probabilities(model_dir, urls):
    model, tokenizer = load_classifier(model_dir)
    return predict_proba(model, tokenizer, urls)


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for words in ("--model", "--input", "--output", "--rejects", ".rejects.csv", "--format", "--column",
                  "--threshold", "metrics.json", "--max-chars", "2048", "--precision", "--device",
                  "--batch-size", "--max-length", "--chunk-rows", "not valid UTF-8", "normalised"):
        assert words in text, words


def test_file_with_bad_rows_scores_the_good_and_rejects_the_rest(teacher_dir, tmp_path, capsys):
    lines = [
        GOOD[0].encode(),
        b"",
        GOOD[1].encode(),
        b"   ",
        b"bad \xff\xfe bytes.com",
        ("x" * 100_000 + ".com").encode(),
        b"tab\there.com",
        b"https://",
        GOOD[2].encode() + b"\r",  # a CRLF line
        GOOD[3].encode(),
        GOOD[4].encode(),
    ]
    source = tmp_path / "urls.txt"
    source.write_bytes(b"\n".join(lines) + b"\n")
    output = tmp_path / "scores.csv"
    assert main(["--model", str(teacher_dir), "--input", str(source), "--output", str(output),
                 "--chunk-rows", "2"]) == 0

    scores, rejects = read_csv(output), read_csv(tmp_path / "scores.rejects.csv")
    assert [int(r["line"]) for r in scores] == [1, 3, 9, 10, 11]
    assert {int(r["line"]): r["reason"] for r in rejects} == {
        2: "empty",
        4: "empty",
        5: "not valid UTF-8",
        6: "longer than 2048 characters (100004)",
        7: "contains control characters",
        8: "empty after normalisation",
    }
    assert rejects[2]["content"] == "bad \\xff\\xfe bytes.com"
    assert [r["url"] for r in scores] == GOOD
    assert [r["normalized_url"] for r in scores] == [normalize_url(u) for u in GOOD]
    probs = np.array([float(r["probability_phishing"]) for r in scores])
    np.testing.assert_allclose(probs, expected_probabilities(teacher_dir, GOOD), rtol=0, atol=1e-6)
    assert [r["label"] for r in scores] == ["phishing" if p >= 0.5 else "legitimate" for p in probs]
    err = capsys.readouterr().err
    assert "read 11 rows: scored 5" in err and "rejected 6" in err


def test_summary_counts_every_row(teacher_dir, tmp_path, capsys):
    source = tmp_path / "urls.txt"
    source.write_text("example.org\n\nexample.com\n")
    main(["--model", str(teacher_dir), "--input", str(source), "--output", str(tmp_path / "s.csv"),
          "--rejects", str(tmp_path / "bad.csv")])
    err = capsys.readouterr().err
    assert "threshold 0.5 (default)" in err
    assert f"read 3 rows: scored 2 -> {tmp_path / 's.csv'}, rejected 1 -> {tmp_path / 'bad.csv'}" in err


def test_csv_column_and_threshold_from_metrics(teacher_dir, tmp_path, capsys):
    model_dir = shutil.copytree(teacher_dir, tmp_path / "model")
    (model_dir / "metrics.json").write_text(json.dumps({"threshold": 0.0, "f1": 0.9}))
    source = tmp_path / "in.csv"
    source.write_text(
        "\ufefflink,status\n"   # with the byte-order mark spreadsheets write
        f"{GOOD[0]},x\n"
        "\n"                      # an empty line
        '"unterminated,x\n'      # malformed quoting
        f'"{GOOD[2]}",x\n',
        encoding="utf-8",
    )
    output = tmp_path / "out.csv"
    main(["--model", str(model_dir), "--input", str(source), "--output", str(output), "--column", "link"])
    scores, rejects = read_csv(output), read_csv(tmp_path / "out.rejects.csv")
    assert [(r["line"], r["url"], r["label"]) for r in scores] == [
        ("2", GOOD[0], "phishing"), ("5", GOOD[2], "phishing")]  # threshold 0: everything is phishing
    assert [r["line"] for r in rejects] == ["3", "4"]
    assert rejects[0]["reason"] == "empty"
    assert rejects[1]["reason"].startswith("malformed CSV row")
    assert f"threshold 0 ({model_dir / 'metrics.json'})" in capsys.readouterr().err


def test_a_csv_row_without_the_column_is_a_reject():
    rows = read_rows([b"id,url\n", b"1,example.org\n", b"2\n"], "csv")
    assert [(r.line, r.url, r.reason) for r in rows] == [
        (2, "example.org", None), (3, None, "1 fields, no 'url' column")]


def test_csv_without_the_column_is_a_usage_error(teacher_dir, tmp_path, capsys):
    source = tmp_path / "in.csv"
    source.write_text("id,page\n1,example.org\n")
    from kd.errors import run_cli

    status = run_cli(main, ["--model", str(teacher_dir), "--input", str(source), "--output", str(tmp_path / "o.csv"),
                            "--format", "csv"])
    assert status == 2 and "no url column" in capsys.readouterr().err


@pytest.mark.parametrize("which", ["teacher_dir", "nf4_dir"])
def test_predict_gives_the_evaluation_probabilities(which, request, tmp_path):
    model_dir = request.getfixturevalue(which)
    urls = GOOD * 3
    source = tmp_path / "urls.txt"
    source.write_text("\n".join(urls) + "\n")
    output = tmp_path / "scores.csv"
    main(["--model", str(model_dir), "--input", str(source), "--output", str(output), "--chunk-rows", "4"])
    probs = [float(r["probability_phishing"]) for r in read_csv(output)]
    np.testing.assert_allclose(probs, expected_probabilities(model_dir, urls), rtol=0, atol=1e-5)


def test_positional_urls_print_a_table(teacher_dir):
    # run as a user would, through `python -m`
    result = subprocess.run(
        [sys.executable, "-m", "kd.predict", "--model", str(teacher_dir), GOOD[2], "", "--threshold", "0"],
        capture_output=True, text=True, check=True,
    )
    header, first, second = result.stdout.splitlines()
    assert header.split() == ["probability", "label", "url"]
    p = expected_probabilities(teacher_dir, [GOOD[2]])[0]
    assert first.split() == [f"{p:.4f}", "phishing", GOOD[2]]
    assert second.split() == ["-", "rejected", "'':", "empty"]
    assert "threshold 0 (--threshold)" in result.stderr
