"""Confidence intervals and paired tests that resample registrable domains.

URLs of one registrable domain are not independent (a phishing kit on one host
yields hundreds of near-copies), so every resampling here draws *clusters*
(domains) with replacement and keeps all URLs of a drawn cluster, as many
times as it was drawn. With ``K`` clusters, one replicate draws ``K`` cluster
ids uniformly; the metric is recomputed on the URLs they hold.

- :func:`bootstrap_ci`: point value and the percentile interval
  ``[q_{a/2}, q_{1-a/2}]`` of the replicates (a = 0.05: 95 %).
- :func:`paired_bootstrap`: two models scored on the same URLs; each replicate
  resamples clusters once and computes ``d* = m(B) - m(A)`` on the same draw.
  Reports ``d``, the percentile interval of ``d*`` and a two-sided p-value of
  ``d = 0`` from the distribution shifted to the null:
  ``p = (1 + #{|d* - d| >= |d|}) / (1 + n)``. Each model may be ``S`` runs
  (seeds, ``(S, N)`` scores): then ``m`` is the mean over the runs, and each
  replicate also draws ``S`` run indices with replacement, the same ones for A
  and B (run ``s`` of A and of B share a seed), so the interval carries the
  seed-to-seed spread as well as the test set's sampling.
- :func:`minimal_detectable_difference`: ``(z_{1-a/2} + z_{power}) * se`` of
  a difference, the smallest true difference a two-sided test at level a finds
  with the given power.

A replicate where the metric is undefined (ROC-AUC on one class: NaN or a
``ValueError``) is left out and counted as ``undefined``.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from statistics import NormalDist

import numpy as np

Metric = Callable[[np.ndarray, np.ndarray], float]
"""``metric(labels, probs) -> value`` on ``(N,)`` arrays."""


def cluster_index(groups) -> np.ndarray:
    """``(N,)`` int cluster id of each example from any hashable group keys (e.g. domains)."""
    _, index = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    return index.astype(np.int64)


def _replicates(clusters: np.ndarray, n_boot: int, seed: int):
    """Yield ``n_boot`` index arrays: for each, ``K`` clusters drawn with
    replacement and every example of each drawn cluster (``clusters``: any keys)."""
    clusters = cluster_index(clusters)
    order = np.argsort(clusters, kind="stable")
    n_clusters = int(clusters.max()) + 1 if len(clusters) else 0
    starts = np.searchsorted(clusters[order], np.arange(n_clusters + 1))
    sizes = np.diff(starts)
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        counts = np.bincount(rng.integers(0, n_clusters, n_clusters), minlength=n_clusters)
        # Each example repeated as often as its cluster was drawn.
        yield order[np.repeat(np.arange(starts[-1]), np.repeat(counts, sizes))]


def _safe(metric: Metric, labels, probs) -> float:
    """The metric, or NaN where it is undefined (scikit-learn raises or warns on one class)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(metric(labels, probs))
        except ValueError:
            return float("nan")


def bootstrap_ci(labels, probs, clusters, metric: Metric, *, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict:
    """``{value, low, high, se, n_boot, undefined}`` of ``metric`` with its
    cluster-bootstrap percentile interval (``se``: std of the replicates)."""
    labels, probs, clusters = np.asarray(labels), np.asarray(probs, dtype=np.float64), np.asarray(clusters)
    values = np.array([_safe(metric, labels[i], probs[i]) for i in _replicates(clusters, n_boot, seed)])
    ok = values[~np.isnan(values)]
    low, high = np.quantile(ok, [alpha / 2, 1 - alpha / 2]) if len(ok) else (float("nan"),) * 2
    return {
        "value": _safe(metric, labels, probs), "low": float(low), "high": float(high),
        "se": float(ok.std(ddof=1)) if len(ok) > 1 else float("nan"), "n_boot": n_boot, "undefined": int(len(values) - len(ok)),
    }


def paired_bootstrap(labels, probs_a, probs_b, clusters, metric: Metric, *, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict:
    """``{difference, low, high, se, p_value, n_boot, undefined}`` of
    ``metric(B) - metric(A)`` on the same URLs; ``probs_a``, ``probs_b``: ``(N,)``
    or ``(S, N)`` (S seeded runs of each, run ``s`` paired; see the module docstring)."""
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    a, b = np.atleast_2d(np.asarray(probs_a, dtype=np.float64)), np.atleast_2d(np.asarray(probs_b, dtype=np.float64))
    if not (len(labels) == a.shape[1] == b.shape[1] == len(clusters)) or a.shape[0] != b.shape[0]:
        raise ValueError(f"paired scores need the same URLs and runs: {len(labels)} labels, scores {a.shape} and {b.shape}, "
                         f"{len(clusters)} clusters")
    runs = np.arange(a.shape[0])

    def difference(rows, i) -> float:
        return float(np.mean([_safe(metric, labels[i], b[r, i]) - _safe(metric, labels[i], a[r, i]) for r in rows]))

    diff = difference(runs, slice(None))
    draw_runs = np.random.default_rng([seed, 1])
    values = np.array([difference(draw_runs.choice(runs, len(runs)), i)
                       for i in _replicates(clusters, n_boot, seed)])
    ok = values[~np.isnan(values)]
    low, high = np.quantile(ok, [alpha / 2, 1 - alpha / 2])
    p_value = (1 + np.count_nonzero(np.abs(ok - diff) >= abs(diff))) / (1 + len(ok))
    return {
        "difference": float(diff), "low": float(low), "high": float(high), "se": float(ok.std(ddof=1)),
        "p_value": float(p_value), "n_boot": n_boot, "undefined": int(len(values) - len(ok)),
    }


def minimal_detectable_difference(se: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """``(z_{1-alpha/2} + z_power) * se``: with ``se`` the standard error of a
    difference between two models (e.g. ``paired_bootstrap(...)["se"]``, or
    ``sqrt(2)`` times one model's :func:`bootstrap_ci` ``se`` when the two are
    assumed independent, an upper bound for paired scores that correlate)."""
    z = NormalDist()
    return float((z.inv_cdf(1 - alpha / 2) + z.inv_cdf(power)) * se)
