"""Metric and split definitions pinned by hand-computed cases (issue 23): each
case fails if the definition drifts (a strict FPR budget, another F1 tie-break,
other ECE bins, a split by host instead of registrable domain)."""
import numpy as np
import pytest
from conftest import write_csv

from kd.data.splits import DataConfig, build_splits
from kd.data.urls import registrable_domain
from kd.eval.metrics import choose_threshold, expected_calibration_error, tpr_at_fpr


def test_tpr_at_fpr_counts_a_roc_point_exactly_at_the_budget():
    """100 negatives (one at 0.9), positives at 0.8 and 0.95: the threshold 0.8 passes one
    negative of 100, an FPR of exactly 1 %, and both positives."""
    labels = np.array([0] * 100 + [1, 1])
    probs = np.array([0.1] * 99 + [0.9] + [0.8, 0.95])
    assert tpr_at_fpr(labels, probs, 0.01) == 1.0
    assert tpr_at_fpr(labels, probs, 0.0099) == 0.5  # below the budget only 0.95 passes


def test_choose_threshold_breaks_an_f1_tie_at_the_threshold_nearest_one_half():
    """F1 is 2/3 at three thresholds: 0.1 (P 4/8, R 4/4), 0.45 (P 3/5, R 3/4) and 0.8 (P 2/2, R 2/4);
    0.45 is the nearest 0.5, neither the first nor the last of the tie."""
    labels = np.array([1, 0, 0, 1, 0, 0, 1, 1])
    probs = np.array([0.1, 0.2, 0.3, 0.45, 0.6, 0.7, 0.8, 0.9])
    assert choose_threshold(labels, probs) == pytest.approx(0.45)


def test_ece_bins_the_confidence_of_the_predicted_class_over_one_half_to_one():
    """15 bins of width 1/30 over confidence max(p, 1 - p) in [0.5, 1]:
    0.54 (right) in bin 1; 0.58 (p 0.42, wrong) in bin 2; 0.95 (right) and 0.96 (p 0.04, wrong)
    in bin 13; 1.0 (right) in bin 14.
    ECE = (|1 - 0.54| + |0 - 0.58| + 2 |0.5 - 0.955| + 0) / 5 = 1.95 / 5 = 0.39.
    (Bins of width 1/15 over [0, 1] would join 0.54 and 0.58, and 0.95 to 1.0: 0.206.)"""
    labels = np.array([1, 1, 1, 1, 1])
    probs = np.array([0.54, 0.42, 0.95, 0.04, 1.0])
    assert expected_calibration_error(labels, probs) == pytest.approx(0.39)


SITES = [f"site{k}.{'co.uk' if k % 3 == 0 else 'xyz'}" for k in range(40)]
SUBDOMAINS = ["", "www.", "login.", "mail.", "secure.account.", "cdn-7."]


def test_registrable_domain_drops_every_subdomain_offline(monkeypatch):
    """tldextract reads its bundled suffix list and never opens a connection: co.uk is one suffix."""
    import socket

    from kd.data import urls

    connections = []
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *args, **kw: connections.append(host) or [])
    monkeypatch.setattr(socket.socket, "connect", lambda sock, address: connections.append(address))
    urls._extractor.cache_clear()  # build the extractor afresh under the patch
    for site in SITES:
        for sub in SUBDOMAINS:
            assert registrable_domain(f"http://{sub}{site}:8080/a/b?c=d") == site
    assert connections == []


def test_the_domain_split_keeps_every_subdomain_of_a_site_together(tmp_path):
    rows = [(f"http://{sub}{site}/page{i}", "phishing" if k % 2 else "legitimate")
            for k, site in enumerate(SITES) for i, sub in enumerate(SUBDOMAINS)]
    splits = build_splits(DataConfig(sources=[str(write_csv(tmp_path / "urls.csv", rows))], split="domain"))

    def site_in(url: str) -> str:  # by the list the rows were made from, not by registrable_domain
        host = url.split("/")[0]
        return next(site for site in SITES if host == site or host.endswith("." + site))

    site_of = {name: {site_in(url) for url in ex.urls}
               for name, ex in (("train", splits.train), ("validation", splits.validation), ("test", splits.test))}
    assert site_of["train"] | site_of["validation"] | site_of["test"] == set(SITES)
    assert not site_of["train"] & site_of["validation"] and not site_of["train"] & site_of["test"]
    assert not site_of["validation"] & site_of["test"]
