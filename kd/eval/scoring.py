"""Scoring a trained classifier: validation during training, the final evaluation
with the threshold chosen on validation, and the scoring precision recorded beside
that threshold."""
from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np

import torch

from kd.data.batching import TokenizedSet
from kd.eval.inference import phishing_column, predict_tokenized, probabilities
from kd.errors import UsageError
from kd.eval.metrics import binary_metrics, choose_threshold, false_positive_rate, save_roc_png, threshold_at_fpr

AUTOCAST_PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""Scoring precisions that run the forward under autocast; every other one
(``fp32`` and the quantized precisions, ``nf4`` ...) runs the model as loaded."""


def scoring_precision_name(amp_dtype: torch.dtype | None) -> str:
    """The name recorded in ``metrics.json`` for scoring under ``amp_dtype``
    (``None``: no autocast, ``fp32``)."""
    names = {dtype: name for name, dtype in AUTOCAST_PRECISIONS.items()}
    return "fp32" if amp_dtype is None else names[amp_dtype]


def scoring_autocast(precision: str) -> torch.dtype | None:
    """The autocast dtype of a recorded scoring precision (``None``: run as loaded)."""
    return AUTOCAST_PRECISIONS.get(precision)


def saved_scoring(model_dir: str | Path, default_precision: str = "fp32") -> tuple[float, str, str]:
    """``(threshold, scoring precision, where they came from)`` for a model folder.

    Training, ``kd.evaluate`` and ``quantize.py`` write both into
    ``MODEL_DIR/metrics.json``: the threshold was tuned on probabilities
    computed in that precision, so every tool that applies the threshold must
    score in it too. Without the file: 0.5 and ``default_precision``.
    """
    metrics = Path(model_dir) / "metrics.json"
    if metrics.is_file():
        saved = json.loads(metrics.read_text())
        if saved.get("threshold") is not None:
            return float(saved["threshold"]), saved.get("scoring_precision", default_precision), str(metrics)
    return 0.5, default_precision, "default"


def saved_validation_fpr(model_dir: str | Path, option: str) -> float:
    """The false-positive rate a model showed on its validation split at its
    deployed threshold (``MODEL_DIR/metrics.json``, written by training and
    quantize.py): the operating point a copy of it keeps (``quantize.py
    --threshold source-fpr``) or a student that replaces it keeps
    (``distill.threshold: teacher-fpr``). A folder without one is a usage error
    that names ``option``, the setting that asked for it."""
    metrics = Path(model_dir) / "metrics.json"
    saved = json.loads(metrics.read_text()) if metrics.is_file() else {}
    validation = saved.get("sets", {}).get("validation") if isinstance(saved, dict) else None
    if not isinstance(validation, dict) or "confusion_matrix" not in validation:
        raise UsageError(f"{model_dir} has no validation scores in metrics.json to take a false-positive rate from "
                         f"({option}); score it with python -m kd.evaluate, or choose the threshold by F1")
    return false_positive_rate(validation["confusion_matrix"])


def make_validator(data: TokenizedSet, batch_size: int, amp_dtype):
    """``evaluate(model) -> metrics`` on the validation set, scored under
    ``amp_dtype`` as the final evaluation will be: F1 etc. at threshold 0.5 and
    the threshold-free metrics (ROC-AUC, TPR at low FPR) that select the best
    checkpoint (``train.metric``, default ``roc_auc``: the deployed threshold is
    tuned afterwards, so F1 at 0.5 would rank checkpoints by the wrong cut)."""

    def evaluate(model) -> dict:
        probs = probabilities(predict_tokenized(model, data, batch_size=batch_size, autocast_dtype=amp_dtype),
                              phishing_column(model))
        metrics = binary_metrics(data.labels, probs, 0.5)
        metrics.pop("confusion_matrix")
        return metrics

    return evaluate


def final_evaluation(model, tokenized: dict[str, TokenizedSet], batch_size: int, scoring_precision: str,
                     out_dir: Path, *, validation_fpr: float | None = None) -> dict:
    """Choose the threshold on validation, apply it to every other set.

    The threshold maximises F1 on validation; with ``validation_fpr``, it is
    instead the one that flags that fraction of the validation legitimate URLs
    (:func:`threshold_at_fpr`: a quantized copy keeps its source's false-alarm
    rate, ``quantize.py --threshold source-fpr``). Every set is scored in
    ``scoring_precision`` (``fp32``, ``bf16`` or ``fp16`` autocast; a quantized
    precision runs as loaded), and the result records it beside the threshold:
    the threshold only holds for probabilities computed that way, so
    ``kd.predict``, ``kd.evaluate`` and ``quantize.py`` read both. Returns
    ``{"threshold": t, "threshold_rule": r, "scoring_precision": p, "sets": {name: metrics}}``
    and writes a ROC PNG and every scored URL's probability to
    ``OUT/scores.csv.gz`` (:func:`write_scores`), which paired comparisons of
    runs (``kd.ablation``) read.
    """
    amp_dtype = scoring_autocast(scoring_precision)
    probs = {
        name: probabilities(predict_tokenized(model, data, batch_size=batch_size, autocast_dtype=amp_dtype, progress=True),
                            phishing_column(model))
        for name, data in tokenized.items()
        if name != "train"
    }
    validation = tokenized["validation"].labels, probs["validation"]
    if validation_fpr is None:
        threshold, rule = choose_threshold(*validation), "max validation F1"
    else:
        threshold, rule = threshold_at_fpr(*validation, validation_fpr), f"validation FPR {validation_fpr:.6g}"
    results = {name: binary_metrics(tokenized[name].labels, p, threshold) for name, p in probs.items()}
    save_roc_png({name: (tokenized[name].labels, p) for name, p in probs.items()}, out_dir / "roc.png")
    write_scores({name: (tokenized[name], p) for name, p in probs.items()}, out_dir / SCORES_FILE)
    return {"threshold": threshold, "threshold_rule": rule, "scoring_precision": scoring_precision, "sets": results}


SCORES_FILE = "scores.csv.gz"
"""Per-URL probabilities of a run's final evaluation: columns ``set,url,label,p_phishing``."""


def write_scores(sets: dict[str, tuple[TokenizedSet, np.ndarray]], path: Path) -> None:
    """One row per scored URL of every set (``p_phishing`` to 7 significant digits); sets
    built without URLs are left out. Replaced whole (:func:`kd.eval.report.written_beside`)."""
    from kd.eval.report import written_beside

    with written_beside(path) as tmp, gzip.open(tmp, "wt", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["set", "url", "label", "p_phishing"])
        for name, (data, probs) in sets.items():
            if data.urls is not None:
                writer.writerows((name, url, int(y), f"{p:.7g}") for url, y, p in zip(data.urls, data.labels, probs))


def read_scores(path: Path) -> dict[str, dict]:
    """``{set: {"urls": [...], "labels": (N,) int, "probs": (N,) float}}`` from :func:`write_scores`' file."""
    columns: dict[str, tuple[list, list, list]] = {}
    with gzip.open(path, "rt", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            urls, labels, probs = columns.setdefault(row["set"], ([], [], []))
            urls.append(row["url"])
            labels.append(int(row["label"]))
            probs.append(float(row["p_phishing"]))
    return {name: {"urls": u, "labels": np.array(y, dtype=np.int64), "probs": np.array(p)} for name, (u, y, p) in columns.items()}
