import numpy as np
import pytest

from kd.eval.metrics import (
    binary_metrics,
    choose_threshold,
    expected_calibration_error,
    false_positive_rate,
    threshold_at_fpr,
    tpr_at_fpr,
)


def test_binary_metrics_on_a_hand_computed_case():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    probs = np.array([0.1, 0.2, 0.3, 0.7, 0.4, 0.8, 0.9, 0.95])
    m = binary_metrics(labels, probs, threshold=0.5)
    assert m["confusion_matrix"] == [[3, 1], [1, 3]]
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["precision"] == pytest.approx(0.75) and m["recall"] == pytest.approx(0.75) and m["f1"] == pytest.approx(0.75)
    # 15 of the 16 (positive, negative) pairs are ranked correctly (0.4 < 0.7 is the miss)
    assert m["roc_auc"] == pytest.approx(15 / 16)


def test_tpr_at_fpr():
    labels = np.array([0] * 100 + [1] * 10)
    probs = np.concatenate([np.linspace(0, 0.5, 100), np.linspace(0.45, 1, 10)])
    # negatives reach up to 0.5: with FPR <= 1 % (one negative allowed) positives above 0.49 pass
    assert tpr_at_fpr(labels, probs, 0.01) == pytest.approx(np.mean(probs[100:] > probs[98]))
    assert tpr_at_fpr(labels, probs, 1.0) == 1.0


def test_ece_perfectly_calibrated_and_overconfident():
    rng = np.random.default_rng(0)
    probs = rng.uniform(0, 1, 200_000)
    labels = (rng.uniform(0, 1, probs.size) < probs).astype(int)
    assert expected_calibration_error(labels, probs) < 0.01
    assert expected_calibration_error(np.array([1, 0, 1, 0]), np.array([0.99, 0.99, 0.99, 0.99])) == pytest.approx(0.49)


def test_threshold_maximises_f1_on_the_given_set():
    labels = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([0.1, 0.2, 0.6, 0.65, 0.7, 0.9])
    t = choose_threshold(labels, probs)
    assert 0.6 < t <= 0.65
    assert binary_metrics(labels, probs, t)["f1"] == 1.0


def test_threshold_at_fpr_flags_that_fraction_of_the_legitimate_urls():
    labels = np.array([1, 0, 0, 1, 0, 0, 0])
    probs = np.array([0.95, 0.4, 0.1, 0.35, 0.9, 0.2, 0.3])  # legitimate, high to low: 0.9, 0.4, 0.3, 0.2, 0.1
    assert threshold_at_fpr(labels, probs, 0.4) == 0.35  # k = 2: 0.9 and 0.4 flagged, and the phishing 0.35 above 0.3
    assert false_positive_rate(binary_metrics(labels, probs, 0.35)["confusion_matrix"]) == pytest.approx(0.4)
    assert threshold_at_fpr(labels, probs, 0.5) == 0.3  # k = 2.5, rounded up to 3
    assert threshold_at_fpr(labels, probs, 0.0) == 0.95  # no legitimate URL flagged
    assert threshold_at_fpr(labels, probs, 1.0) == 0.1
    just_above = threshold_at_fpr(np.array([0, 1]), np.array([0.9, 0.2]), 0.0)
    assert 0.9 < just_above < 0.9 + 1e-12
    with pytest.raises(ValueError, match="no legitimate URL"):
        threshold_at_fpr(np.ones(3), np.full(3, 0.5), 0.1)
    with pytest.raises(ValueError, match=r"lies in \[0, 1\]"):
        threshold_at_fpr(labels, probs, 1.5)


def test_the_max_f1_threshold_is_given_back_at_its_own_false_positive_rate():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 500)
    probs = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1)
    best = choose_threshold(labels, probs)
    fpr = false_positive_rate(binary_metrics(labels, probs, best)["confusion_matrix"])
    assert threshold_at_fpr(labels, probs, fpr) == best


def test_single_class_sets_give_nan_auc():
    m = binary_metrics(np.ones(5, dtype=int), np.full(5, 0.9))
    assert np.isnan(m["roc_auc"]) and m["recall"] == 1.0


def test_a_table_row_with_a_missing_cell_is_an_error_not_a_shifted_row():
    from kd.eval.report import markdown_table

    assert markdown_table(["a", "b"], [["1", "2"]]).splitlines()[-1] == "| 1 | 2 |"
    with pytest.raises(ValueError, match="1 cells for 2 columns"):
        markdown_table(["a", "b"], [["1"]])
