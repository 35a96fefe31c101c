"""End to end on a slice of the real Hannousse data with the packaged pretrained MiniLM."""
import csv
import json

import pytest

from conftest import write_csv

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hannousse_slice(data_dir, tmp_path_factory):
    """600 real rows (300 per class) of the Hannousse CSV, in a temporary file."""
    rows = {"legitimate": [], "phishing": []}
    with open(data_dir / "hannousse" / "dataset_phishing.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if len(rows[row["status"]]) < 300:
                rows[row["status"]].append((row["url"], row["status"]))
    return write_csv(tmp_path_factory.mktemp("slice") / "hannousse_slice.csv", rows["legitimate"] + rows["phishing"])


@pytest.fixture(scope="module")
def teacher_run(hannousse_slice, data_dir, minilm_dir, tmp_path_factory):
    import train_teacher

    out = tmp_path_factory.mktemp("teacher")
    results = train_teacher.main([
        "--out", str(out), "--source", str(hannousse_slice), "--epochs", "2",
        "--set", "train.batch_size=16", "--set", "train.lr=1e-4", "--set", "train.eval_batch_size=128",
        "--set", f"data.data_dir={data_dir}", "--set", "data.max_test_examples=300",
        "--set", "data.test_sets={phishtank: [phishtank_2020/online-valid.csv, iscx_url2016/Benign_list_big_final.csv:label=legitimate]}",
    ])
    return out, results


def test_teacher_learns_and_writes_a_self_describing_checkpoint(teacher_run):
    out, results = teacher_run
    assert results["sets"]["test"]["roc_auc"] > 0.8  # chance is 0.5; 60 steps of a pretrained MiniLM
    assert set(results["sets"]) == {"validation", "test", "phishtank"}
    best = out / "best"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "run_info.json", "metrics.json"):
        assert (best / name).is_file(), name
    info = json.loads((best / "run_info.json").read_text())
    assert info["versions"]["torch"] and info["data"]["source_hashes"] and info["data"]["split_sizes"]["train"]["n"] > 400
    assert json.loads((best / "metrics.json").read_text())["threshold"] == results["threshold"]
    assert (out / "roc.png").stat().st_size > 1000 and (out / "splits.csv").is_file() and list((out / "tb").iterdir())
    assert (out / "last" / "trainer_state" / "optimizer.safetensors").is_file()


def test_evaluate_rebuilds_the_same_split_and_scores(teacher_run):
    from kd.evaluate import main

    out, results = teacher_run
    evaluation = main(["--model", str(out / "best"), "--out", str(out / "eval")])
    assert evaluation["threshold"] == pytest.approx(results["threshold"])
    assert evaluation["sets"]["test"]["f1"] == pytest.approx(results["sets"]["test"]["f1"], abs=1e-6)
    assert (out / "eval" / "eval.json").is_file() and (out / "eval" / "roc.png").is_file()


def test_student_quantize_and_predict_on_the_real_teacher(teacher_run, tmp_path_factory):
    """The rest of the pipeline on the same slice: distil a pruned 3-layer student,
    quantize it to NF4, and score URLs with the saved NF4 folder."""
    import quantize
    import train_student
    from kd.predict import main as predict

    teacher, _ = teacher_run
    root = tmp_path_factory.mktemp("pipeline")
    student = train_student.main([
        "--teacher", str(teacher / "best"), "--out", str(root / "student"), "--epochs", "2",
        "--set", "student.prune_vocab=true", "--set", "train.batch_size=16", "--set", "train.lr=2e-4",
        "--set", "train.eval_batch_size=128", "--set", f"distill.cache_dir={root / 'cache'}",
    ])
    assert student["sets"]["test"]["roc_auc"] > 0.75  # chance is 0.5
    assert student["comparison"]["percent_smaller"] > 50

    report = quantize.main([
        "--student", str(root / "student" / "best"), "--precisions", "nf4", "--out", str(root / "quantized"),
        "--latency-repeats", "3", "--throughput-urls", "64",
    ])
    rows = {r["precision"]: r for r in report["rows"]}
    assert rows["nf4"]["memory_bytes"] < 0.75 * rows["fp32"]["memory_bytes"]
    assert rows["nf4"]["roc_auc"] > rows["fp32"]["roc_auc"] - 0.05

    urls = root / "urls.txt"
    urls.write_text("paypal.com.account-verify.example.tk/login\n\nwww.wikipedia.org/wiki/URL\n")
    predict(["--model", str(root / "quantized" / "student-nf4"), "--input", str(urls),
             "--output", str(root / "scores.csv"), "--rejects", str(root / "rejects.csv")])
    with open(root / "scores.csv", newline="") as handle:
        scores = list(csv.DictReader(handle))
    assert [s["line"] for s in scores] == ["1", "3"] and all(0 <= float(s["probability_phishing"]) <= 1 for s in scores)
    assert "2," in (root / "rejects.csv").read_text()  # the empty line, with its number
