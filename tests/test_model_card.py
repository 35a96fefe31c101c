"""Issue 25: every best/ and quantized folder carries a model card generated from
its metrics.json and run_info.json, and its threshold and scoring precision in config.json."""
import json

import pytest
import yaml

from kd.eval.model_card import CARD_METRICS, proportion_intervals, wilson_interval


def card_parts(folder) -> tuple[dict, str]:
    """The card's YAML front matter and its text."""
    _, header, body = (folder / "README.md").read_text(encoding="utf-8").split("---\n", 2)
    return yaml.safe_load(header), body


def check_card_is_the_folders(folder) -> None:
    """The card's and config.json's numbers are the folder's metrics.json's."""
    metrics = json.loads((folder / "metrics.json").read_text())
    header, body = card_parts(folder)
    assert header["pipeline_tag"] == "text-classification" and header["license"] == "apache-2.0"
    assert header["metrics"] == list(CARD_METRICS) and header["datasets"] and header["base_model"]
    results = {r["dataset"]["name"]: {m["type"]: m["value"] for m in r["metrics"]} for r in header["model-index"][0]["results"]}
    assert results == {name: {m: scores[m] for m in CARD_METRICS} for name, scores in metrics["sets"].items()}
    assert f"**{metrics['threshold']:.6g}**" in body and f"**{metrics['scoring_precision']}**" in body
    for name, scores in metrics["sets"].items():
        low, high = proportion_intervals(scores)["accuracy"]
        assert f"| {name} | {scores['n']} | {scores['accuracy']:.4f} [{low:.4f}, {high:.4f}] |" in body
    assert 'pipeline("text-classification"' in body and "python -m kd.predict" in body
    config = json.loads((folder / "config.json").read_text())
    assert config["phishing_threshold"] == metrics["threshold"]
    assert config["scoring_precision"] == metrics["scoring_precision"]


def test_best_folder_has_a_card_with_its_numbers(tiny_teacher_run):
    check_card_is_the_folders(tiny_teacher_run / "teacher" / "best")


def test_trained_folder_normalises_urls_in_its_tokenizer(tiny_teacher_run):
    from kd.data.urls import has_url_normalizer
    from models.encoder import load_tokenizer

    assert has_url_normalizer(load_tokenizer(str(tiny_teacher_run / "teacher" / "best")))


def test_card_names_the_drop_on_other_collections():
    from kd.eval.model_card import limits

    scores = {"f1": 0.9}
    assert "test F1 0.9000; cross: F1 0.5000" in limits({"sets": {"test": scores, "cross": {"f1": 0.5}}})
    assert "No set from another collection" in limits({"sets": {"test": scores}})


def test_wilson_interval():
    low, high = wilson_interval(0, 10)
    assert low == pytest.approx(0, abs=1e-12) and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(50, 100)
    assert (low, high) == (pytest.approx(0.4038, abs=1e-4), pytest.approx(0.5962, abs=1e-4))
