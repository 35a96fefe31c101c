"""quantize.py end to end on a tiny teacher and its 1-layer student (CPU, seconds)."""
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import make_url_rows, student_overrides, write_csv
from kd.eval.inference import predict_proba
from kd.train.student import StudentRunConfig
from models.quantized import load_classifier


@pytest.fixture(scope="module")
def student_dir(tiny_teacher_run):
    import train_student
    from kd.train.config import load_config

    cfg = load_config(StudentRunConfig, None, student_overrides(tiny_teacher_run, "student-for-quantize"))
    train_student.distill_encoder(cfg)
    return tiny_teacher_run / "student-for-quantize" / "best"


@pytest.fixture(scope="module")
def report(tiny_teacher_run, student_dir):
    import quantize

    cross = write_csv(tiny_teacher_run / "cross.csv", make_url_rows(40, seed=7))
    return quantize.main([
        "--student", str(student_dir), "--teacher", str(tiny_teacher_run / "teacher" / "best"),
        "--precisions", "nf4", "dynamic-int8", "onnx-int8", "--out", str(tiny_teacher_run / "quantized"),
        "--latency-repeats", "3", "--throughput-urls", "64",
        "--test-source", f"cross={cross}", "--sets", "validation", "test", "cross",
    ])


def test_report_has_every_variant_and_every_column(report, tiny_teacher_run):
    out = tiny_teacher_run / "quantized"
    assert [(r["role"], r["precision"]) for r in report["rows"]] == [
        ("teacher", "fp32"), ("teacher", "bf16"), ("student", "fp32"), ("student", "bf16"),
        ("student", "nf4"), ("student", "dynamic-int8"), ("student", "onnx-int8"),
    ]
    for row in report["rows"]:
        for key in ("parameters", "disk_bytes", "memory_bytes", "accuracy", "f1", "roc_auc", "tpr_at_1pct_fpr",
                    "latency_ms_batch1", "throughput_urls_per_s_batch256", "percent_smaller_memory", "percent_smaller_disk"):
            assert np.isfinite(row[key]), (row["precision"], key)
    assert report["rows"][0]["percent_smaller_memory"] == 0
    assert all(r["sets"]["test"]["n"] == 16 for r in report["rows"])  # the student's own split, from its run_info
    assert json.loads((out / "report.json").read_text())["rows"][4]["precision"] == "nf4"
    assert (out / "report.md").read_text().count("\n| student |") == 5
    assert (out / "size_vs_f1.png").stat().st_size > 0


def test_report_has_cross_data_set_and_training_time_columns(report, tiny_teacher_run):
    header, _, *lines = (tiny_teacher_run / "quantized" / "report.md").read_text().splitlines()[2:]
    assert "| cross F1 | cross ROC-AUC |" in header and header.endswith("| training (min) |")
    assert {line.count("|") for line in lines} == {header.count("|")}  # every row has every column
    teacher_minutes = json.loads((tiny_teacher_run / "teacher" / "best" / "metrics.json").read_text())["train_seconds"] / 60
    rows = {(r["role"], r["precision"]): r for r in report["rows"]}
    assert rows["teacher", "bf16"]["training_minutes"] == pytest.approx(teacher_minutes)  # the source's, per variant
    assert all(r["sets"]["cross"]["n"] == 40 for r in report["rows"])
    nf4 = rows["student", "nf4"]
    nf4_line = next(line for line in lines if line.startswith("| student | nf4 |"))
    assert f"| {nf4['sets']['cross']['f1']:.4f} | {nf4['sets']['cross']['roc_auc']:.4f} |" in nf4_line


def test_sizes_shrink_with_precision(report):
    rows = {(r["role"], r["precision"]): r for r in report["rows"]}
    fp32, bf16, nf4 = rows["student", "fp32"], rows["student", "bf16"], rows["student", "nf4"]
    assert fp32["parameters"] == bf16["parameters"] == nf4["parameters"]
    assert bf16["memory_bytes"] < 0.6 * fp32["memory_bytes"]
    assert nf4["memory_bytes"] < fp32["memory_bytes"]
    assert fp32["percent_smaller_memory"] > 0  # the student has half the teacher's layers


def test_saved_variant_reloads_and_predict_uses_its_threshold(report):
    from kd.predict import default_threshold

    row = next(r for r in report["rows"] if r["precision"] == "nf4")
    model, tokenizer = load_classifier(row["folder"])
    threshold, source = default_threshold(row["folder"])
    assert threshold == pytest.approx(row["threshold"]) and source.endswith("metrics.json")
    probs = predict_proba(model, tokenizer, ["example.com/login", "paypal.com.secure-update.tk/verify"])
    assert probs.shape == (2,) and np.all((probs >= 0) & (probs <= 1))


def test_the_onnx_int8_row_is_an_onnx_runtime_folder_with_the_students_parameters(report):
    from models.onnx import is_onnx_folder, onnx_precision

    rows = {(r["role"], r["precision"]): r for r in report["rows"]}
    onnx_row, fp32 = rows["student", "onnx-int8"], rows["student", "fp32"]
    assert is_onnx_folder(onnx_row["folder"]) and onnx_precision(onnx_row["folder"]) == "int8"
    assert onnx_row["parameters"] == fp32["parameters"]
    assert onnx_row["memory_bytes"] < 0.6 * fp32["memory_bytes"]  # int8 weights
    metrics = json.loads((Path(onnx_row["folder"]) / "metrics.json").read_text())
    assert metrics["threshold"] == pytest.approx(onnx_row["threshold"]) and metrics["scoring_precision"] == "onnx-int8"
    assert "onnxruntime.InferenceSession" in (Path(onnx_row["folder"]) / "README.md").read_text()


def test_test_set_names_the_set_the_report_columns_give(tiny_teacher_run, student_dir):
    import quantize

    cross = write_csv(tiny_teacher_run / "cross2.csv", make_url_rows(30, seed=9))
    report = quantize.main(["--student", str(student_dir), "--precisions", "nf4", "--out", str(tiny_teacher_run / "q-cross"),
                            "--latency-repeats", "2", "--throughput-urls", "16", "--test-source", f"cross={cross}",
                            "--sets", "validation", "cross", "--test-set", "cross"])
    for row in report["rows"]:
        assert row["test_set"] == "cross" and row["f1"] == row["sets"]["cross"]["f1"] and "test" not in row["sets"]
    assert "(cross set, threshold from validation: max F1)" in (tiny_teacher_run / "q-cross" / "report.md").read_text()


def test_source_fpr_thresholds_keep_each_sources_validation_false_alarm_rate(tiny_teacher_run, student_dir):
    import quantize
    from kd.eval.scoring import saved_validation_fpr

    teacher = tiny_teacher_run / "teacher" / "best"
    report = quantize.main(["--student", str(student_dir), "--teacher", str(teacher), "--precisions", "nf4",
                            "--threshold", "source-fpr", "--out", str(tiny_teacher_run / "q-fpr"),
                            "--latency-repeats", "2", "--throughput-urls", "16"])
    assert [(r["role"], r["precision"]) for r in report["rows"]][-1] == ("student", "nf4")
    for row in report["rows"]:
        source = teacher if row["role"] == "teacher" else student_dir
        assert row["validation_fpr"] == pytest.approx(saved_validation_fpr(source, "test"))
        assert row["threshold_rule"].startswith("validation FPR")
        saved = json.loads((Path(row["folder"]) / "metrics.json").read_text())
        assert saved["threshold"] == row["threshold"] and saved["threshold_rule"] == row["threshold_rule"]
    fp32 = next(r for r in report["rows"] if (r["role"], r["precision"]) == ("student", "fp32"))
    assert fp32["threshold"] == pytest.approx(json.loads((student_dir / "metrics.json").read_text())["threshold"])
    assert "threshold from validation: its source's false-positive rate" in (tiny_teacher_run / "q-fpr" / "report.md").read_text()


def test_source_fpr_needs_the_sources_validation_scores(tiny_teacher_run, tmp_path):
    import shutil

    import quantize
    from kd.errors import UsageError

    bare = shutil.copytree(tiny_teacher_run / "teacher" / "best", tmp_path / "bare")
    (bare / "metrics.json").unlink()
    with pytest.raises(UsageError, match=r"no validation scores in metrics.json .*\(--threshold source-fpr\)"):
        quantize.main(["--student", str(bare), "--precisions", "nf4", "--threshold", "source-fpr", "--out", str(tmp_path / "q")])


def test_unknown_set_is_a_clear_error(tiny_teacher_run, student_dir):
    import quantize
    from kd.errors import UsageError

    with pytest.raises(UsageError, match="no set named"):
        quantize.main(["--student", str(student_dir), "--sets", "nope", "--out", str(tiny_teacher_run / "q2")])


def test_labels_of_points_that_coincide_go_on_separate_lines():
    from kd.eval.variants import label_rows

    # bf16 and dynamic-int8 students: same F1, sizes 10 % apart; a third on the same spot; fp32 far away.
    points = [(17.8, 0.9607), (19.6, 0.9607), (18.5, 0.9607), (35.5, 0.9607), (17.1, 0.9575), (90.9, 0.9663)]
    assert label_rows(points) == [0, 1, 2, 0, 0, 0]


def test_quantized_folder_carries_run_record_and_card(report, tiny_teacher_run, tmp_path):
    """Issue 25: kd.evaluate finds the data spec in a quantized folder without --config."""
    from kd.data.urls import has_url_normalizer
    from kd.evaluate import main as evaluate_main
    from test_model_card import check_card_is_the_folders

    folder = tiny_teacher_run / "quantized" / "student-nf4"
    source = json.loads((tiny_teacher_run / "student-for-quantize" / "best" / "run_info.json").read_text())
    assert json.loads((folder / "run_info.json").read_text()) == source
    check_card_is_the_folders(folder)
    assert has_url_normalizer(load_classifier(folder)[1])
    result = evaluate_main(["--model", str(folder), "--out", str(tmp_path / "eval")])
    assert result["sets"]["test"]["n"] == 16
