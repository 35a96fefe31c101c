"""A saved folder's model card (``README.md`` in the Hugging Face Hub's format) and
its scoring fields in ``config.json``, generated from its ``metrics.json`` and
``run_info.json`` (:func:`describe_folder`), never written by hand.

The card's YAML front matter holds ``license``, ``base_model``, ``datasets``,
``metrics``, ``pipeline_tag`` and a ``model-index`` with every scored set's
metrics (the numbers of ``metrics.json``); the text gives the threshold, the
intervals, how to score with ``transformers.pipeline`` and ``kd.predict``, and
the limits of the numbers.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from kd.eval.report import markdown_table, write_json, written_beside
from models.onnx import ONNX_RECORD

MODEL_CARD = "README.md"
THRESHOLD_FIELD = "phishing_threshold"
"""``config.json`` field: the probability of phishing from which a URL is called phishing."""
PRECISION_FIELD = "scoring_precision"
"""``config.json`` field: the precision the probabilities were computed in when the threshold was tuned."""
LICENSE = "apache-2.0"
CARD_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "tpr_at_1pct_fpr")
"""The metrics the card reports per set (all in every ``metrics.json`` set)."""


def describe_folder(folder: str | Path) -> None:
    """Write ``folder``'s :data:`THRESHOLD_FIELD` and :data:`PRECISION_FIELD` into its
    ``config.json`` and its card into ``README.md``, from its ``metrics.json`` and
    (when present) ``run_info.json``. Call it whenever ``metrics.json`` is written."""
    folder = Path(folder)
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    info_file = folder / "run_info.json"
    info = json.loads(info_file.read_text(encoding="utf-8")) if info_file.is_file() else {}
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config[THRESHOLD_FIELD] = metrics["threshold"]
    config[PRECISION_FIELD] = metrics["scoring_precision"]
    write_json(folder / "config.json", config)
    export_file = folder / ONNX_RECORD
    export = json.loads(export_file.read_text(encoding="utf-8")) if export_file.is_file() else None
    with written_beside(folder / MODEL_CARD) as tmp:
        tmp.write_text(model_card(metrics, info, export), encoding="utf-8")


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95 % for ``z`` 1.96) of a proportion ``successes / n``."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def proportion_intervals(metrics: dict) -> dict[str, tuple[float, float]]:
    """Wilson intervals of accuracy, precision and recall from a set's confusion matrix."""
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]
    return {"accuracy": wilson_interval(tn + tp, tn + fp + fn + tp),
            "precision": wilson_interval(tp, tp + fp),
            "recall": wilson_interval(tp, tp + fn)}


def base_model(info: dict) -> str | None:
    """The model the run started from: the teacher's ``model.name_or_path``, a
    student's ``student.name_or_path``, else its teacher folder; None if unknown."""
    config = info.get("config") or {}
    return ((config.get("model") or {}).get("name_or_path") or (config.get("student") or {}).get("name_or_path")
            or config.get("teacher"))


def dataset_names(info: dict) -> list[str]:
    """The training sources and extra test sets of the run: each source's name, else its path."""
    from kd.data.sources import SourceSpec

    data = (info.get("config") or {}).get("data") or {}
    sources = list(data.get("sources") or []) + [s for specs in (data.get("test_sets") or {}).values() for s in specs]
    specs = [SourceSpec.from_dict(source) for source in sources]
    return list(dict.fromkeys(spec.name or spec.path for spec in specs))


def front_matter(metrics: dict, info: dict) -> dict:
    """The card's YAML header: Hub fields and a ``model-index`` with every set's metrics."""
    header = {"license": LICENSE, "pipeline_tag": "text-classification", "tags": ["phishing-detection", "url-classification"],
              "metrics": list(CARD_METRICS)}
    if base_model(info):
        header["base_model"] = base_model(info)
    if dataset_names(info):
        header["datasets"] = dataset_names(info)
    header["model-index"] = [{"name": "phishing-url-classifier", "results": [
        {"task": {"type": "text-classification", "name": "phishing URL detection"},
         "dataset": {"name": name, "type": "urls", "split": name},
         "metrics": [{"type": m, "value": scores[m], "name": f"{m} ({name})"} for m in CARD_METRICS]}
        for name, scores in metrics["sets"].items()
    ]}]
    return header


def _score(value: float, interval: tuple[float, float] | None) -> str:
    return f"{value:.4f}" + (f" [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else "")


def scores_table(metrics: dict) -> str:
    """Markdown table: one row per scored set, the :data:`CARD_METRICS` with
    Wilson intervals where a proportion has one."""
    rows = []
    for name, scores in metrics["sets"].items():
        intervals = proportion_intervals(scores)
        rows.append([name, str(scores["n"]), *(_score(scores[m], intervals.get(m)) for m in CARD_METRICS)])
    return markdown_table(["set", "URLs", *CARD_METRICS], rows)


def limits(metrics: dict) -> str:
    """The intended use and what the numbers do not show: collection artefacts and
    the drop on sets from other collections (the cross-data-set sets, if scored)."""
    sets = metrics["sets"]
    cross = [name for name in sets if name not in ("validation", "test")]
    text = ("Intended use: ranking or flagging URLs for a human or a further check, on URLs like the training "
            "sources. It reads the URL string only (no page content, no reputation data).\n\n"
            "Limits: the training sources carry collection artefacts (schemes, `www.`, trailing `/`, HTML-entity "
            "residue, host case) that separate the classes within one collection; the tokenizer removes the ones "
            "the project knows, but others remain, so the in-source test scores partly measure how the sources "
            "were collected. The intervals are per-URL binomial (Wilson) intervals, narrower than intervals "
            "that resample whole domains.")
    if cross and "test" in sets:
        drops = ", ".join(f"{name}: F1 {sets[name]['f1']:.4f}" for name in cross)
        text += f"\n\nOn sets from other collections the scores drop (test F1 {sets['test']['f1']:.4f}; {drops})."
    else:
        text += "\n\nNo set from another collection was scored: expect lower scores on URLs collected elsewhere."
    return text


def how_to_score(threshold: float, export: dict | None) -> str:
    """The card's code: ``pipeline`` for a torch folder; ONNX Runtime for an exported one
    (``export``: its ``onnx_export.json``), which ``pipeline`` cannot load."""
    if export is None:
        return f"""The tokenizer normalises raw URLs as training did (scheme, `www.`, trailing `/`, `&amp;` residue).

```python
from transformers import pipeline

classify = pipeline("text-classification", model="FOLDER", top_k=None)
scores = classify(["http://www.example.com/login"])[0]
p = next(s["score"] for s in scores if s["label"] == "phishing")
is_phishing = p >= {threshold:.6g}
```"""
    return f"""This folder is the ONNX export (`model.onnx`, {export['precision']}, opset {export['opset']}) of
`{export['source']}`; the scores above are that source's ({export['source_precision']}, PyTorch).
The tokenizer normalises raw URLs as training did (scheme, `www.`, trailing `/`, `&amp;` residue).

```python
import numpy as np
import onnxruntime
from transformers import AutoConfig, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("FOLDER")
phishing = AutoConfig.from_pretrained("FOLDER").label2id["phishing"]
session = onnxruntime.InferenceSession("FOLDER/model.onnx", providers=["CPUExecutionProvider"])
batch = tokenizer(["http://www.example.com/login"], padding=True, return_tensors="np")
(logits,) = session.run(["logits"], {{"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}})
p = np.exp(logits - logits.max(-1, keepdims=True))
p = p[:, phishing] / p.sum(-1)
is_phishing = p >= {threshold:.6g}
```"""


def model_card(metrics: dict, info: dict, export: dict | None = None) -> str:
    """The card's text (``README.md``) from a folder's ``metrics.json`` and ``run_info.json`` contents
    (and, for an ONNX export, its ``onnx_export.json``)."""
    threshold, precision = metrics["threshold"], metrics["scoring_precision"]
    header = yaml.safe_dump(front_matter(metrics, info), sort_keys=False, allow_unicode=True)
    return f"""---
{header}---

# Phishing URL classifier

Generated from this folder's `metrics.json` and `run_info.json`. A URL is called phishing when the
probability of the `phishing` label is at least **{threshold:.6g}** (`{THRESHOLD_FIELD}` in
`config.json`, chosen on the validation set for the best F1), with probabilities computed in
**{precision}** (`{PRECISION_FIELD}`).

## Scores

{scores_table(metrics)}

## How to score

{how_to_score(threshold, export)}

With this project: `python -m kd.predict --model FOLDER http://www.example.com/login`
(it applies the threshold and precision above).

## Intended use and limits

{limits(metrics)}
"""
