"""URL augmentation for teacher-labelled transfer sets (kd.data.augment)."""
import random

import pytest

from kd.data.augment import augment_urls, drop_piece, split_host

URLS = [
    "paypal.com.verify-login.xyz/secure/update?id=7&session=abc",
    "example.org/docs/index.html",
    "news.site.net",
    "shop.example.com?ref=mail",
]


def test_split_host_separates_host_from_path_and_query():
    assert split_host("a.com/x/y?q=1") == ("a.com", "/x/y?q=1")
    assert split_host("a.com?q=1/2") == ("a.com", "?q=1/2")
    assert split_host("a.com") == ("a.com", "")


def test_drop_piece_removes_exactly_one_segment_or_parameter():
    url = URLS[0]
    results = {drop_piece(url, random.Random(seed)) for seed in range(200)}
    assert results == {
        "paypal.com.verify-login.xyz/update?id=7&session=abc",
        "paypal.com.verify-login.xyz/secure?id=7&session=abc",
        "paypal.com.verify-login.xyz/secure/update?session=abc",
        "paypal.com.verify-login.xyz/secure/update?id=7",
    }
    assert drop_piece("news.site.net", random.Random(0)) is None


def test_augment_urls_recombines_training_pieces_only_and_is_seeded():
    copies = augment_urls(URLS, 4, seed=1)
    assert copies == augment_urls(URLS, 4, seed=1) and copies != augment_urls(URLS, 4, seed=2)
    assert copies and len(copies) == len(set(copies)) and not set(copies) & set(URLS)
    hosts = {split_host(u)[0] for u in URLS}
    rests = {split_host(u)[1] for u in URLS}
    for url in copies:
        host, rest = split_host(url)
        assert host in hosts
        # crossover: another URL's whole path/query; drop: a sub-sequence of this host's pieces
        assert rest in rests or drop_piece_of(url, URLS)
    assert augment_urls(URLS, 0, seed=0) == []
    with pytest.raises(ValueError, match="copies_per_url"):
        augment_urls(URLS, -1, seed=0)


def drop_piece_of(copy: str, urls: list[str]) -> bool:
    """Whether ``copy`` is some URL of ``urls`` with one segment or parameter removed."""
    return any(copy == drop_piece(u, random.Random(s)) for u in urls for s in range(50))
