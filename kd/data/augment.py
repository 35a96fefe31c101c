"""Perturbed copies of training URLs, for a transfer set that the teacher labels.

Distillation can train the student on any input the teacher can score, not
only on labelled ones: matching the teacher on inputs near the training data
shows the student more of the teacher's function than the labelled URLs alone
("function matching", Beyer et al. 2022). Each copy is made by one of two
structural edits of a normalised URL ``host[/path][?query]``:

- ``crossover``: the host of this URL with the path and query of another
  training URL (the teacher decides what the mix looks like);
- ``drop``: one path segment or query parameter removed.

Both only recombine or remove existing pieces, so the copies use the
training URLs' tokens (a vocabulary-pruned student grows little). The copies
carry no label: only the objective's teacher terms see them.
"""
from __future__ import annotations

import random

def split_host(url: str) -> tuple[str, str]:
    """``(host, rest)`` of a normalised URL; ``rest`` starts with ``/`` or ``?`` or is empty."""
    cut = min((i for i in (url.find("/"), url.find("?")) if i >= 0), default=len(url))
    return url[:cut], url[cut:]


def drop_piece(url: str, rng: random.Random) -> str | None:
    """``url`` without one random path segment or query parameter (None: it has neither)."""
    host, rest = split_host(url)
    path, question, query = rest.partition("?")
    segments = [s for s in path.split("/") if s]
    params = [p for p in query.split("&") if p] if question else []
    pieces = len(segments) + len(params)
    if pieces == 0:
        return None
    k = rng.randrange(pieces)
    if k < len(segments):
        del segments[k]
    else:
        del params[k - len(segments)]
    new = host + "".join("/" + s for s in segments)
    return new + ("?" + "&".join(params) if params else "")


def augment_urls(urls: list[str], copies_per_url: int, seed: int) -> list[str]:
    """``copies_per_url`` perturbed copies of each URL (crossover or drop, chosen
    at random, seeded), without duplicates and without the originals; the
    order is deterministic for a given ``seed``."""
    if copies_per_url < 0:
        raise ValueError(f"copies_per_url must be >= 0, got {copies_per_url}")
    rng = random.Random(seed)
    originals = set(urls)
    parts = [split_host(url) for url in urls]  # (host, path and query) of each URL, split once
    out: dict[str, None] = {}
    for url, (host, _) in zip(urls, parts):
        for _ in range(copies_per_url):
            if rng.random() < 0.5:
                new = host + parts[rng.randrange(len(urls))][1]
            else:
                new = drop_piece(url, rng)
            if new and new not in originals:
                out[new] = None
    return list(out)
