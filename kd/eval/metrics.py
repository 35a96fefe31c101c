"""Binary classification metrics for phishing detection (label 1 = phishing).

The decision threshold is always chosen on the validation split (by default
:func:`choose_threshold`, max F1; a quantized copy may instead keep its source's
false-alarm rate, :func:`threshold_at_fpr`) and then applied unchanged to every test set.
"""
from __future__ import annotations

import numpy as np

FPR_POINTS = (0.01, 0.001)

SELECTION_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr")
"""The keys of :func:`binary_metrics` where higher is better: the validation
metrics that can pick the best checkpoint (``train.metric``)."""


def tpr_at_fpr(labels: np.ndarray, probs: np.ndarray, max_fpr: float) -> float:
    """Highest true-positive rate over thresholds whose false-positive rate is <= ``max_fpr``."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, probs)
    ok = fpr <= max_fpr
    return float(tpr[ok].max()) if ok.any() else 0.0


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """ECE = sum_b (n_b / N) * |accuracy_b - confidence_b| over equal-width bins of
    the confidence max(p, 1 - p) of the predicted class."""
    confidence = np.maximum(probs, 1 - probs)
    correct = (probs >= 0.5).astype(int) == labels
    bins = np.minimum((confidence - 0.5) * 2 * n_bins, n_bins - 1).astype(int)  # confidence in [0.5, 1]
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def choose_threshold(labels, probs, metric: str = "f1") -> float:
    """The probability threshold that maximises F1 (or accuracy) on the given
    (validation) labels; ties go to the threshold nearest 0.5."""
    from sklearn.metrics import precision_recall_curve

    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    candidates = np.unique(np.concatenate([probs, [0.5]]))
    if metric == "f1":
        precision, recall, thresholds = precision_recall_curve(labels, probs)
        f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
        scores, candidates = f1, thresholds
    elif metric == "accuracy":
        scores = np.array([((probs >= t).astype(int) == labels).mean() for t in candidates])
    else:
        raise ValueError(f"threshold metric must be 'f1' or 'accuracy', not {metric!r}")
    best = scores.max()
    near = candidates[np.isclose(scores, best)]
    return float(near[np.argmin(np.abs(near - 0.5))])


def threshold_at_fpr(labels, probs, fpr: float) -> float:
    """The lowest threshold at which ``p >= threshold`` flags the fraction ``fpr``
    of the legitimate URLs (label 0) of the given (validation) set. With their
    scores sorted high to low, s_1 >= s_2 >= ..., and k = fpr * n_legitimate
    rounded to the nearest integer (halves up), it is the lowest score of the
    set above s_{k+1}: k legitimate URLs flagged (more only where scores tie)
    and every phishing URL above s_{k+1}. A model's max-F1 threshold is this
    threshold at its own false-positive rate, so a copy scored the same way
    gets its source's threshold back. It holds an operating point, a
    false-alarm rate, where :func:`choose_threshold` re-optimises F1."""
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    if not 0 <= fpr <= 1:
        raise ValueError(f"a false-positive rate lies in [0, 1], not {fpr}")
    legitimate = np.sort(probs[labels == 0])[::-1]
    if legitimate.size == 0:
        raise ValueError("the set has no legitimate URL to set a false-positive rate on")
    k = int(np.floor(fpr * legitimate.size + 0.5))  # nearest, halves up
    if k == legitimate.size:
        return float(probs.min())
    above = probs[probs > legitimate[k]]
    return float(above.min()) if above.size else float(np.nextafter(legitimate[k], np.inf))


def false_positive_rate(confusion_matrix) -> float:
    """FP / (FP + TN) of a confusion matrix ``[[tn, fp], [fn, tp]]`` (:func:`binary_metrics`)."""
    (tn, fp), _ = confusion_matrix
    return fp / (fp + tn) if fp + tn else float("nan")


def binary_metrics(labels, probs, threshold: float = 0.5) -> dict:
    """Accuracy, precision, recall, F1 at ``threshold``; ROC-AUC, PR-AUC, TPR at
    1 % and 0.1 % FPR, ECE; the confusion matrix ``[[tn, fp], [fn, tp]]``."""
    from sklearn.metrics import average_precision_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score

    labels, probs = np.asarray(labels).astype(int), np.asarray(probs, dtype=np.float64)
    if len(labels) == 0:
        raise ValueError("cannot compute metrics on an empty set")
    preds = (probs >= threshold).astype(int)
    precision, recall, f1, _ = precision_recall_fscore_support(labels, preds, average="binary", zero_division=0)
    both = len(np.unique(labels)) == 2
    out = {
        "n": int(len(labels)),
        "threshold": float(threshold),
        "accuracy": float((preds == labels).mean()),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "roc_auc": float(roc_auc_score(labels, probs)) if both else float("nan"),
        "pr_auc": float(average_precision_score(labels, probs)) if both else float("nan"),
        "ece": expected_calibration_error(labels, probs),
        "confusion_matrix": confusion_matrix(labels, preds, labels=[0, 1]).tolist(),
    }
    for point in FPR_POINTS:
        out[f"tpr_at_{point * 100:g}pct_fpr"] = tpr_at_fpr(labels, probs, point) if both else float("nan")
    return out


def save_roc_png(curves: dict[str, tuple[np.ndarray, np.ndarray]], path) -> None:
    """ROC curves (log-scaled FPR axis, where phishing filters operate), one per named set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, (labels, probs) in curves.items():
        if len(np.unique(labels)) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels, probs)
        ax.plot(np.maximum(fpr, 1e-4), tpr, label=f"{name} (AUC {roc_auc_score(labels, probs):.3f})")
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_xlabel("false-positive rate (log)")
    ax.set_ylabel("true-positive rate")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
