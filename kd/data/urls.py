"""URL normalisation and registrable domains.

Normalisation removes collection artefacts that a model would learn instead of
phishing (see ``../shared/data/README.md``): HTML-entity residue, the scheme,
a leading ``www.``, a trailing ``/`` and host case.
"""
from __future__ import annotations

import re
from functools import lru_cache

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://")
_ENTITY = re.compile(r"&amp;", re.IGNORECASE)


def normalize_url(url: str) -> str:
    """Return the normalised form of one URL.

    ``&amp;`` is decoded repeatedly (``&amp;amp;`` occurs in ISCX), then the
    scheme, a leading ``www.`` and one trailing ``/`` are stripped and the host
    (not the path, which is case-sensitive) is lower-cased.

    >>> normalize_url("HTTPS://WWW.Example.COM/Login.php?a=1&amp;b=2/")
    'example.com/Login.php?a=1&b=2'
    """
    url = url.strip()
    while True:
        decoded = _ENTITY.sub("&", url)
        if decoded == url:
            break
        url = decoded
    url = _SCHEME.sub("", url)
    cut = len(url)
    for sep in "/?#":
        pos = url.find(sep)
        if pos != -1:
            cut = min(cut, pos)
    host, rest = url[:cut].lower(), url[cut:]
    if host.startswith("www."):
        host = host[4:]
    url = host + rest
    if url.endswith("/"):
        url = url[:-1]
    return url


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
