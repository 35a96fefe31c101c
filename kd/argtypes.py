"""argparse ``type=`` validators for the numeric options of the CLIs.

argparse turns the ``ValueError`` into ``error: argument --batch-size: ...``
and exit status 2, before any model is loaded or any file is opened.
"""
from __future__ import annotations

import argparse
import math


def positive_int(text: str) -> int:
    """An integer >= 1 (batch sizes, lengths, counts): 0 or a negative value
    would, e.g., score no batch at all and return uninitialised memory."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (>= 1), got {value}")
    return value


def probability(text: str) -> float:
    """A finite number in [0, 1] (decision thresholds on a probability)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text}")
    return value


def token_length(text: str) -> int:
    """A ``--max-length`` in tokens: an integer >= 8 (what :func:`kd.data.batching.tokenize` accepts)."""
    value = positive_int(text)
    if value < 8:
        raise argparse.ArgumentTypeError(f"must be at least 8 tokens, got {value}")
    return value
