"""URL normalisation and registrable domains.

Normalisation removes collection artefacts that a model would learn instead of
phishing (see ``../shared/data/README.md``): HTML-entity residue, the scheme,
leading ``www.``, trailing ``/`` and host case.

The rewrites are data (:data:`URL_REWRITES`): :func:`normalize_url` applies them
with :mod:`re`, and :func:`with_url_normalizer` puts the same rewrites into a
tokenizer's ``tokenizers`` normalizer, which every saved folder's tokenizer
carries, so that ``transformers.pipeline`` on a raw URL sees what the model was
trained on.
The patterns use only syntax that Python's ``re`` and Oniguruma (the
``tokenizers`` regex engine) read alike: ``\\A`` for the start, ``(?![\\s\\S])``
for the end, explicit character classes instead of flags.
"""
from __future__ import annotations

import re
from functools import lru_cache

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://")

URL_REWRITES: tuple[tuple[str, str], ...] = (
    # HTML-entity residue, nested any depth (``&amp;amp;`` occurs in ISCX), any case.
    (r"&(?:[aA][mM][pP];)+", "&"),
    # Leading whitespace, schemes and ``www.`` in any mix and number.
    (r"\A(?:[\t\n\v\f\r ]|[a-zA-Z][a-zA-Z0-9+.\-]*://|[wW][wW][wW]\.)+", ""),
    # Trailing whitespace and ``/``.
    (r"[\t\n\v\f\r /]+(?![\s\S])", ""),
)
"""``(pattern, replacement)`` rewrites, applied in order, each to every match.

Each removes all it matches at once (not one ``www.`` or one ``/``), so the
normalisation is idempotent: the project's scoring path normalises in Python and
the saved tokenizer normalises again, and both must give what training saw."""

_REWRITES = tuple((re.compile(pattern), replacement) for pattern, replacement in URL_REWRITES)


def normalize_url(url: str) -> str:
    """Return the normalised form of one URL: :data:`URL_REWRITES` in order, and
    the host (up to the first ``/``, ``?`` or ``#``; not the path, which is
    case-sensitive) lower-cased. ``normalize_url(normalize_url(u)) == normalize_url(u)``.

    >>> normalize_url("HTTPS://WWW.Example.COM/Login.php?a=1&amp;b=2/")
    'example.com/Login.php?a=1&b=2'
    """
    for pattern, replacement in _REWRITES:
        url = pattern.sub(replacement, url)
    cut = len(url)
    for sep in "/?#":
        pos = url.find(sep)
        if pos != -1:
            cut = min(cut, pos)
    return url[:cut].lower() + url[cut:]


def host_of(url: str) -> str:
    """The host of a URL with or without scheme, without port or user info."""
    url = _SCHEME.sub("", url.strip())
    for sep in "/?#":
        url = url.split(sep, 1)[0]
    host = url.rsplit("@", 1)[-1]
    if host.startswith("["):  # IPv6 literal
        return host.split("]", 1)[0] + "]"
    return host.split(":", 1)[0].lower()


@lru_cache(maxsize=None)
def _extractor():
    import tldextract

    # suffix_list_urls=() : use the suffix list bundled with tldextract, never the network.
    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


def registrable_domain(url: str) -> str:
    """The eTLD+1 of the URL's host (``a.b.example.co.uk`` -> ``example.co.uk``).

    IP addresses and hosts without a public suffix fall back to the whole host,
    so that each stays one group in a domain split.
    """
    host = host_of(url)
    parts = _extractor()(host)
    if parts.domain and parts.suffix:
        return f"{parts.domain}.{parts.suffix}"
    return host


def url_normalizer_steps() -> list:
    """:data:`URL_REWRITES` as ``tokenizers`` ``Replace`` normalizers, in order.

    The host lower-casing of :func:`normalize_url` has no ``tokenizers``
    counterpart (no normalizer changes the case of part of a string); the
    uncased tokenizers lower-case the whole text afterwards (BERT's
    ``lowercase``), which includes the host (:func:`with_url_normalizer`)."""
    from tokenizers import Regex
    from tokenizers.normalizers import Replace

    return [Replace(Regex(pattern), replacement) for pattern, replacement in URL_REWRITES]


def _step_specs() -> list[dict]:
    import json

    from tokenizers.normalizers import Sequence

    return json.loads(Sequence(url_normalizer_steps()).__getstate__())["normalizers"]


def has_url_normalizer(tokenizer) -> bool:
    """Whether ``tokenizer``'s normalizer starts with :func:`url_normalizer_steps`."""
    import json

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    spec = json.loads(backend.to_str()).get("normalizer") or {}
    steps = _step_specs()
    return spec.get("type") == "Sequence" and spec["normalizers"][: len(steps)] == steps


def with_url_normalizer(tokenizer):
    """``tokenizer`` itself if it already normalises URLs, else a new tokenizer
    with its vocabulary, special tokens and input names whose normalizer applies
    :data:`URL_REWRITES` before its own (e.g. BERT's cleaning and lower-casing),
    so that any consumer of a saved folder (``transformers.pipeline``,
    ``AutoTokenizer``) scores a raw URL as :func:`normalize_url` would have
    normalised it.

    The new tokenizer is transformers' generic ``PreTrainedTokenizerFast``:
    model classes such as ``BertTokenizer`` rebuild their normalizer from their
    own settings when loaded, dropping the one saved in ``tokenizer.json``.
    Raises ``ValueError`` for a tokenizer without a ``tokenizers`` backend. A
    tokenizer that keeps case (RoBERTa's byte-level BPE) gets the rewrites but
    not the host lower-casing, which no ``tokenizers`` normalizer can express:
    there ``pipeline`` on a URL with an upper-case host differs from ``kd.predict``.
    """
    from tokenizers import Tokenizer
    from tokenizers.normalizers import Sequence
    from transformers import PreTrainedTokenizerFast

    if has_url_normalizer(tokenizer):
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{type(tokenizer).__name__} has no tokenizers backend to carry the URL normalisation")
    backend = Tokenizer.from_str(backend.to_str())
    own = backend.normalizer
    backend.normalizer = Sequence(url_normalizer_steps() + ([own] if own is not None else []))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=tokenizer.model_max_length, padding_side=tokenizer.padding_side,
        model_input_names=list(tokenizer.model_input_names), **tokenizer.special_tokens_map,
    )
