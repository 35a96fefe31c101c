"""Issue 25: a saved folder scores a raw URL the same through ``transformers.pipeline``
as through ``kd.predict``: its tokenizer carries the project's URL normalisation."""
import random
import re

import pytest

from kd.data.urls import URL_REWRITES, has_url_normalizer, normalize_url, url_normalizer_steps, with_url_normalizer


def raw_urls(n: int, seed: int = 0) -> list[str]:
    """``n`` raw URLs with every artefact the normaliser handles, in random mixes:
    schemes in any case, ``WWW.``, upper-case hosts, trailing ``/``, nested
    ``&amp;``, surrounding whitespace."""
    rng = random.Random(seed)
    words = ["login", "Verify", "secure", "ACCOUNT", "news", "docs", "shop", "wiki", "bank"]
    urls = []
    for i in range(n):
        host = f"{rng.choice(words)}{i}.{rng.choice(['com', 'xyz', 'co.uk', 'ORG'])}"
        if rng.random() < 0.5:
            host = host.upper() if rng.random() < 0.5 else host.title()
        path = "/".join(rng.choice(words) for _ in range(rng.randint(0, 4)))
        query = "?a=1" + rng.choice(["&amp;", "&amp;amp;", "&AMP;", "&"]) + "b=2" if rng.random() < 0.5 else ""
        url = (rng.choice(["", "http://", "HTTPS://", "ftp://", "https://http://"])
               + rng.choice(["", "www.", "WWW.", "www.www."]) + host + ("/" + path if path else "") + query
               + rng.choice(["", "/", "//", "/ "]))
        urls.append(rng.choice(["", " ", "\t", "  "]) + url + rng.choice(["", " ", "\n"]))
    return urls


def test_rewrites_read_alike_in_python_and_tokenizers():
    """Each rewrite does the same in ``re`` and in the ``tokenizers`` normalizer."""
    for (pattern, replacement), step in zip(URL_REWRITES, url_normalizer_steps()):
        for url in raw_urls(300):
            assert step.normalize_str(url) == re.sub(pattern, replacement, url), (pattern, url)


def test_normalize_url_is_idempotent_on_every_artefact_mix():
    for url in raw_urls(500, seed=1) + ["https://https://www.www.x.com//", "http:// www.x.com / /", "www./"]:
        once = normalize_url(url)
        assert normalize_url(once) == once, url


def test_tokenizer_normalises_as_normalize_url(minilm_dir):
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(minilm_dir)
    tokenizer = with_url_normalizer(plain)
    assert has_url_normalizer(tokenizer) and not has_url_normalizer(plain)
    assert with_url_normalizer(tokenizer) is tokenizer
    for url in raw_urls(500):
        expected = plain(normalize_url(url))["input_ids"]
        assert tokenizer(url)["input_ids"] == expected, url
        assert tokenizer(normalize_url(url))["input_ids"] == expected, url  # normalised twice: the same
