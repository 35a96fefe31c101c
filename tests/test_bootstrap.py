"""Cluster bootstrap intervals, the paired test and the minimal detectable difference."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from kd.eval.bootstrap import bootstrap_ci, cluster_index, minimal_detectable_difference, paired_bootstrap


def accuracy(labels, probs):
    return float(((probs >= 0.5) == labels).mean())


def test_the_interval_resamples_domains_not_urls_on_a_hand_computed_case():
    # Two domains of 50 URLs each: one all right, one all wrong. Drawing 2 domains
    # with replacement gives accuracy 0, 0.5 or 1 with probability 1/4, 1/2, 1/4,
    # so the 95 % interval is [0, 1]; resampling URLs would give about 0.5 +- 0.1.
    labels = np.array([1] * 50 + [1] * 50)
    probs = np.array([0.9] * 50 + [0.1] * 50)
    domains = ["right.com"] * 50 + ["wrong.com"] * 50
    ci = bootstrap_ci(labels, probs, cluster_index(domains), accuracy, n_boot=2000, seed=0)
    assert ci["value"] == 0.5 and ci["low"] == 0.0 and ci["high"] == 1.0
    assert ci["se"] == pytest.approx(np.sqrt(0.125), abs=0.02)  # std of {0, .5, 1} with weights 1/4, 1/2, 1/4
    assert bootstrap_ci(labels, probs, domains, accuracy, n_boot=2000, seed=0) == ci  # domain names work as cluster keys
    per_url = bootstrap_ci(labels, probs, np.arange(100), accuracy, n_boot=2000, seed=0)
    assert 0.35 < per_url["low"] < 0.45 and 0.55 < per_url["high"] < 0.65


def test_a_constant_metric_has_a_zero_width_interval_and_one_class_replicates_are_counted():
    labels = np.array([0, 1] * 10)
    probs = labels * 0.8 + 0.1
    ci = bootstrap_ci(labels, probs, np.arange(20) // 2, roc_auc_score, n_boot=200)
    assert (ci["value"], ci["low"], ci["high"]) == (1.0, 1.0, 1.0) and ci["undefined"] == 0
    lonely = bootstrap_ci(labels, probs, labels, roc_auc_score, n_boot=200)  # 2 clusters: one per class
    assert lonely["undefined"] > 50  # draws of one cluster twice hold one class


def planted(seed, gap):
    """2,000 URLs on 400 domains; model B's scores separate the classes better by ``gap``."""
    rng = np.random.default_rng(seed)
    domains = np.repeat(np.arange(400), 5)
    labels = np.repeat(rng.integers(0, 2, 400), 5)
    domain_noise = np.repeat(rng.normal(0, 1, 400), 5)  # shared by both models: what makes them paired
    a = labels * 1.0 + domain_noise + rng.normal(0, 1, 2000)
    b = labels * (1.0 + gap) + domain_noise + rng.normal(0, 1, 2000)
    return labels, a, b, domains


def test_the_paired_test_detects_a_planted_difference():
    labels, a, b, domains = planted(0, gap=0.6)
    out = paired_bootstrap(labels, a, b, domains, roc_auc_score, n_boot=200)
    assert out["difference"] > 0.03 and out["low"] > 0 and out["p_value"] < 0.01


def test_the_paired_test_does_not_flag_a_null_difference():
    labels, a, _, domains = planted(1, gap=0.0)
    b = a + np.random.default_rng(5).normal(0, 0.05, len(a))  # the same model, slightly jittered
    out = paired_bootstrap(labels, a, b, domains, roc_auc_score, n_boot=200)
    assert out["low"] <= 0 <= out["high"] and out["p_value"] > 0.05


def test_paired_scores_must_be_on_the_same_urls():
    with pytest.raises(ValueError, match="same URLs"):
        paired_bootstrap([0, 1], [0.1, 0.9], [0.2], [0, 1], roc_auc_score)


def test_minimal_detectable_difference_is_z_sum_times_se():
    assert minimal_detectable_difference(0.01) == pytest.approx((1.959964 + 0.841621) * 0.01, rel=1e-5)
    assert minimal_detectable_difference(0.01, power=0.5) == pytest.approx(0.0196, abs=1e-4)


def test_the_paired_test_over_seeds_detects_a_difference_every_seed_shows():
    labels, a0, _, domains = planted(2, gap=0.0)
    rng = np.random.default_rng(3)
    a = np.stack([a0 + rng.normal(0, 0.3, len(a0)) for _ in range(3)])
    b = np.stack([a0 + labels * 0.6 + rng.normal(0, 0.3, len(a0)) for _ in range(3)])
    out = paired_bootstrap(labels, a, b, domains, roc_auc_score, n_boot=200)
    assert out["low"] > 0 and out["p_value"] < 0.01


def test_the_paired_test_over_seeds_carries_the_seed_spread():
    """Seed 0 of B is far better than A's, seed 1 far worse, seed 2 equal: each pair alone is
    significant, but their mean is not, because seeds are resampled."""
    labels, a0, _, domains = planted(4, gap=0.0)
    a = np.stack([a0, a0, a0])
    b = np.stack([a0 + labels * 1.0, a0 - labels * 1.0, a0])
    alone = paired_bootstrap(labels, a[0], b[0], domains, roc_auc_score, n_boot=200)
    assert alone["low"] > 0
    out = paired_bootstrap(labels, a, b, domains, roc_auc_score, n_boot=200)
    assert out["low"] < 0 < out["high"] and out["p_value"] > 0.05


def test_paired_runs_must_match_in_number():
    with pytest.raises(ValueError, match="runs"):
        paired_bootstrap([0, 1], [[0.1, 0.9], [0.2, 0.8]], [[0.1, 0.9]], [0, 1], roc_auc_score)
