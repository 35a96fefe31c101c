"""Paired comparisons of two groups of seeded runs on the same test URLs.

Each run's final evaluation wrote every scored URL's probability
(``OUT/scores.csv.gz``, :func:`kd.eval.scoring.write_scores`) and its
threshold (``results.json``). For a group B against a reference group A, both
run with the same seeds ``s = 1..S`` on the same split, and for every set
scored by both except ``validation`` (where the thresholds were chosen):

    d = mean_s m(B_s) - mean_s m(A_s)

with ``m`` the ROC-AUC (threshold-free) or the F1 at each run's own
threshold. Its 95 % interval and p-value come from
:func:`kd.eval.bootstrap.paired_bootstrap`, resampling registrable domains
and seeds together. ``significant`` means the interval excludes 0. ``mdd`` is
the minimal detectable difference at 80 % power from the replicates' standard
error: the smallest true gap that this test set and these seeds would show.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kd.data.urls import registrable_domain
from kd.eval.bootstrap import cluster_index, minimal_detectable_difference, paired_bootstrap
from kd.eval.scoring import SCORES_FILE, read_scores

METRICS = ("roc_auc", "f1")


def _roc_auc(labels, probs) -> float:
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(labels, probs)


def _f1_of_verdicts(labels, verdicts) -> float:
    """F1 of verdicts already thresholded (``verdicts`` in {0, 1})."""
    from sklearn.metrics import f1_score

    return f1_score(labels, verdicts >= 0.5, zero_division=0.0)


def load_group(run_dirs: list[Path]) -> tuple[dict[str, dict], list[float]]:
    """Every run's scores (:func:`read_scores`) and threshold; a run without scores is an error."""
    scores, thresholds = [], []
    for run in run_dirs:
        if not (run / SCORES_FILE).is_file():
            raise FileNotFoundError(f"{run} has no {SCORES_FILE} (a run older than per-URL scores): train it again to compare it")
        scores.append(read_scores(run / SCORES_FILE))
        thresholds.append(float(json.loads((run / "results.json").read_text())["threshold"]))
    return scores, thresholds


def compare_groups(reference: list[Path], other: list[Path], *, n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """One row per (set, metric): ``{set, metric, reference, value, difference, low, high,
    p_value, significant, mdd, n_urls, n_domains, runs}`` for ``other`` minus ``reference``
    (run ``i`` of each paired, so both lists are ordered by seed)."""
    if len(reference) != len(other) or not reference:
        raise ValueError(f"paired groups need the same number of seeded runs, got {len(reference)} and {len(other)}")
    scores_a, thresholds_a = load_group(reference)
    scores_b, thresholds_b = load_group(other)
    sets = [name for name in scores_a[0] if name != "validation" and all(name in s for s in (*scores_a, *scores_b))]
    rows = []
    for name in sets:
        first = scores_a[0][name]
        for s in (*scores_a, *scores_b):
            if s[name]["urls"] != first["urls"]:
                raise ValueError(f"set {name!r} holds different URLs in the runs compared: they must share the split")
        clusters = cluster_index([registrable_domain(url) for url in first["urls"]])
        probs_a = np.stack([s[name]["probs"] for s in scores_a])
        probs_b = np.stack([s[name]["probs"] for s in scores_b])
        for row in paired_metrics(first["labels"], clusters, probs_a, probs_b, thresholds_a, thresholds_b, n_boot=n_boot, seed=seed):
            rows.append({"set": name, **row, "runs": len(reference)})
    return rows


def paired_metrics(labels, clusters, probs_a, probs_b, thresholds_a, thresholds_b, *, n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """B against A on the same URLs, one row per metric (ROC-AUC, then F1 at each run's own
    threshold): ``{metric, reference, value, difference, low, high, p_value, significant, mdd,
    n_urls, n_domains}``. ``probs_a``, ``probs_b``: ``(S, N)`` (S seeded runs, run ``s`` paired)
    or ``(N,)``; ``thresholds_*``: one per run; ``clusters``: ``(N,)`` domain index."""
    labels = np.asarray(labels)
    probs_a, probs_b = np.atleast_2d(probs_a), np.atleast_2d(probs_b)
    verdicts_a = np.stack([p >= t for p, t in zip(probs_a, thresholds_a)]).astype(float)
    verdicts_b = np.stack([p >= t for p, t in zip(probs_b, thresholds_b)]).astype(float)
    rows = []
    for metric, fn, a, b in (("roc_auc", _roc_auc, probs_a, probs_b), ("f1", _f1_of_verdicts, verdicts_a, verdicts_b)):
        test = paired_bootstrap(labels, a, b, clusters, fn, n_boot=n_boot, seed=seed)
        rows.append({
            "metric": metric, "reference": float(np.mean([fn(labels, p) for p in a])),
            "value": float(np.mean([fn(labels, p) for p in b])), "difference": test["difference"],
            "low": test["low"], "high": test["high"], "p_value": test["p_value"],
            "significant": bool(test["low"] > 0 or test["high"] < 0),
            "mdd": minimal_detectable_difference(test["se"]), "n_urls": len(labels),
            "n_domains": int(np.max(clusters)) + 1,
        })
    return rows
