"""A causal LM and its tokenizer, frozen as loaded: full precision or 4-bit NF4."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from models.device import resolve_device
from models.gguf import SMOLLM_ALIAS, resolve_causal_lm
from models.paths import NO_REMOTE_CODE, check_tokenizer

Quantize = Literal["nf4", "none"]


def load_causal_tokenizer(name_or_path: str | Path, config=None):
    """The tokenizer, right-padded, with the EOS token as pad where it has none;
    checked (:func:`models.paths.check_tokenizer`) against the model's ``config``,
    by default the folder's own (an adapter folder has none: pass the base's)."""
    from transformers import AutoConfig, AutoTokenizer

    path = resolve_causal_lm(str(name_or_path))
    tokenizer = AutoTokenizer.from_pretrained(path, **NO_REMOTE_CODE)
    config = config if config is not None else AutoConfig.from_pretrained(path, **NO_REMOTE_CODE)
    check_tokenizer(tokenizer, config, name_or_path, causal=True)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    name_or_path: str = SMOLLM_ALIAS,
    quantize: Quantize = "none",
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
):
    """``(model, tokenizer)`` of a causal LM, frozen as loaded (no adapters).

    ``quantize="nf4"``: linear layers in 4-bit NF4 with double quantization
    (the quantization constants quantized too);
    matmuls run in the compute dtype, bf16 on CUDA and float32 on CPU (where
    bitsandbytes has no fast bf16 path). Embeddings, norms and the LM head stay
    in that dtype. ``quantize="none"``: every weight in ``dtype``.
    Also serves a generative teacher (``quantize="none"``, or ``"nf4"`` to save memory).
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    device = resolve_device(device)
    path = resolve_causal_lm(name_or_path)
    tokenizer = load_causal_tokenizer(path)  # first: a folder with a wrong tokenizer fails before the weights load
    if quantize == "nf4":
        compute = torch.bfloat16 if device.type == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=compute,
            device_map={"": str(device)},
            quantization_config=BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=compute,
            ),
            **NO_REMOTE_CODE,
        )
        _keep_trainable_4bit_layout(model)
    elif quantize == "none":
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **NO_REMOTE_CODE).to(device)
    else:
        raise ValueError(f"quantize must be 'nf4' or 'none', not {quantize!r}")
    model.eval()
    return model, tokenizer


def _keep_trainable_4bit_layout(model) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference.

    On CPUs with AVX512-BF16, a ``Linear4bit`` that runs once in eval mode on
    an input without grad rewrites its weight, for good, into an inference
    layout (absmax in bf16) whose matmul has no backward: training after an
    evaluation then gets silently wrong LoRA gradients, and the rounding
    changes predictions. Keeping the one layout costs CPU inference speed and
    keeps training, evaluation and reloading consistent (the versions and
    the measurements: benchmarks/notes.md).
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False

