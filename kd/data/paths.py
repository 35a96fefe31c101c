"""Where the project finds its data when the user names none."""
from __future__ import annotations

import os
from pathlib import Path

HUB_DATASET = "pirocheto/phishing-url"
"""The Hugging Face hub copy of the Hannousse data, for users with internet."""

REPO_ROOT = Path(__file__).resolve().parents[2]


def default_data_dir() -> Path | None:
    """The data folder: ``$KD_DATA_DIR``, else the first of ``../shared/data``
    and ``./data`` (relative to the repository) that exists, else ``None``."""
    env = os.environ.get("KD_DATA_DIR")
    if env:
        return Path(env)
    for candidate in (REPO_ROOT.parent / "shared" / "data", REPO_ROOT / "data"):
        if candidate.is_dir():
            return candidate
    return None
