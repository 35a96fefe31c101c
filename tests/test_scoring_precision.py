"""Issue 11 item 8: one scoring precision and one threshold across the tools.

A tiny teacher trained and evaluated under bf16 autocast records
``scoring_precision: bf16`` beside its threshold; kd.evaluate, kd.predict and
quantize.py's fp32 variant then score in bf16 too and reproduce the same
threshold and the same verdicts."""
import csv
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, make_url_rows, write_csv


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory, tiny_bert_dir):
    import train_teacher
    from kd.train.config import RunConfig, load_config

    root = tmp_path_factory.mktemp("bf16-run")
    data_csv = write_csv(root / "urls.csv", make_url_rows(160))
    cfg = load_config(RunConfig, None, [
        f"model.name_or_path={tiny_bert_dir}", f"data.sources=[{data_csv}]", "data.split=random",
        "train.epochs=1", "train.batch_size=16", "train.lr=1e-3", "train.precision=bf16", f"out_dir={root / 'run'}",
    ])
    return root, train_teacher.run(cfg)


def split_rows(run_dir: Path, name: str) -> list[tuple[str, int]]:
    with open(run_dir / "splits.csv", newline="") as f:
        return [(r["url"], int(r["label"])) for r in csv.DictReader(f) if r["split"] == name]


def confusion(labels, verdicts) -> list[list[int]]:
    out = [[0, 0], [0, 0]]
    for y, v in zip(labels, verdicts):
        out[y][v] += 1
    return out


def test_training_records_the_scoring_precision_beside_the_threshold(bf16_run):
    import json

    root, results = bf16_run
    saved = json.loads((root / "run" / "best" / "metrics.json").read_text())
    assert saved["scoring_precision"] == "bf16" and saved["threshold"] == results["threshold"]


def test_evaluate_predict_and_quantize_agree_with_training(bf16_run, capsys):
    import json

    import quantize
    from kd.evaluate import main as evaluate
    from kd.predict import main as predict

    root, results = bf16_run
    best = root / "run" / "best"
    evaluation = evaluate(["--model", str(best), "--out", str(root / "eval")])
    assert evaluation["threshold"] == results["threshold"]
    assert evaluation["scoring_precision"] == "bf16"
    for name in ("validation", "test"):
        assert evaluation["sets"][name]["confusion_matrix"] == results["sets"][name]["confusion_matrix"]

    for name in ("validation", "test"):
        rows = split_rows(root / "run", name)
        source = root / f"{name}.txt"
        source.write_text("".join(url + "\n" for url, _ in rows))
        output = root / f"{name}-scores.csv"
        assert predict(["--model", str(best), "--input", str(source), "--output", str(output)]) == 0
        with open(output, newline="") as f:
            verdicts = [int(r["label"] == "phishing") for r in csv.DictReader(f)]
        assert confusion([y for _, y in rows], verdicts) == results["sets"][name]["confusion_matrix"], name
    assert "scoring in bf16" in capsys.readouterr().err

    report = quantize.main(["--student", str(best), "--precisions", "dynamic-int8", "--out", str(root / "q"),
                            "--latency-repeats", "1", "--throughput-urls", "8"])
    fp32 = next(r for r in report["rows"] if r["precision"] == "fp32")
    assert fp32["scoring_precision"] == "bf16" and fp32["threshold"] == results["threshold"]
    for name in ("validation", "test"):
        assert fp32["sets"][name]["confusion_matrix"] == results["sets"][name]["confusion_matrix"]
    assert json.loads((Path(fp32["folder"]) / "metrics.json").read_text())["scoring_precision"] == "bf16"
    quantized = next(r for r in report["rows"] if r["precision"] == "dynamic-int8")
    assert quantized["scoring_precision"] == "dynamic-int8"  # a quantized variant keeps its own precision


def test_checkpoints_are_selected_by_a_threshold_free_metric():
    from kd.train.loop import TrainConfig

    assert TrainConfig().metric == "roc_auc"
    for preset in sorted((REPO_ROOT / "configs").glob("*.yaml")):
        metric = (yaml.safe_load(preset.read_text()).get("train") or {}).get("metric", "roc_auc")
        assert metric != "f1", preset.name
