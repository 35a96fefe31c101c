"""The QLoRA student: a frozen causal LM (4-bit NF4, or full precision) with LoRA
adapters; saving, reloading and merging the adapters.

Checkpoints hold the adapters only (``save_adapters``); ``merge_adapters`` folds
them into a full-precision copy of the base for export. ``generative.json``
beside them names the base, its quantization and the prompt format (a plain
dictionary: ``template``, ``words``, ``max_url_chars``).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from models.causal_lm import Quantize, load_causal_lm, load_causal_tokenizer
from models.paths import record_tokenizer
from models.gguf import SMOLLM_ALIAS
from models.verbalizer import template_token_ids

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""Attention and MLP projections of Llama-style models (SmolLM2, Llama, Qwen2, Mistral)."""

META_FILE = "generative.json"
"""Written next to adapters and merged models: the base, the quantization and the prompt format."""

ADAPTER_CONFIG = "adapter_config.json"
"""peft's file in an adapter folder (``save_adapters``); a merged folder has a ``config.json`` instead."""


def prepare_for_training(model, quantize: Quantize, gradient_checkpointing: bool):
    """Freeze the base; for 4-bit, upcast the non-quantized weights to float32
    (peft's ``prepare_model_for_kbit_training``) so norms and embeddings do not
    lose precision in bf16."""
    from peft import prepare_model_for_kbit_training

    # Non-reentrant checkpointing needs no hook making the inputs require grad.
    ckpt_kwargs = {"use_reentrant": False}
    if quantize == "nf4":
        return prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs=ckpt_kwargs,
        )
    model.requires_grad_(False)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
    return model


def load_qlora_student(
    name_or_path: str = SMOLLM_ALIAS,
    *,
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.05,
    target_modules: Sequence[str] | None = None,
    quantize: Quantize = "nf4",
    device: str | torch.device | None = None,
    gradient_checkpointing: bool = False,
):
    """``(peft model, tokenizer)``: the base in NF4 (or full precision with
    ``quantize="none"``), frozen, with LoRA adapters ``W + (α/r)·B·A`` on
    ``target_modules`` (default ``LORA_TARGETS``); only A and B train.

    Gradient checkpointing is off by default: URL prompts are short, so
    activations are small next to the weights and recomputing them would only
    cost time; turn it on for long prompts or large bases.
    """
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_causal_lm(name_or_path, quantize, device)
    model = prepare_for_training(model, quantize, gradient_checkpointing)
    config = LoraConfig(
        r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=list(target_modules or LORA_TARGETS),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    # Record the name the user gave (e.g. packaged:smollm2), not the cache
    # folder it resolved to, so that adapters reload on another machine.
    model.peft_config["default"].base_model_name_or_path = str(name_or_path)
    model.train()
    return model, tokenizer



def save_adapters(model, tokenizer, out_dir: str | Path, prompt: dict) -> Path:
    """Write the LoRA adapters only (``adapter_model.safetensors`` +
    ``adapter_config.json``), the tokenizer, and ``generative.json`` naming the
    base, its quantization and the prompt format ``prompt`` (``template``,
    ``words``, ``max_url_chars``) with its verbalizer token ids."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    base = model.get_base_model()
    meta = {
        "base": model.peft_config["default"].base_model_name_or_path,
        "quantize": "nf4" if getattr(base, "is_loaded_in_4bit", False) else "none",
        "prompt": dict(prompt),
        "verbalizer_token_ids": template_token_ids(tokenizer, prompt["template"], prompt["words"]),
    }
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir


def is_adapter_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by :func:`save_adapters` (adapters and
    ``generative.json``, no base weights), to load with :func:`load_adapters`."""
    return (Path(path) / ADAPTER_CONFIG).is_file() and (Path(path) / META_FILE).is_file()


def load_adapters(
    adapter_dir: str | Path,
    device: str | torch.device | None = None,
    quantize: Quantize | None = None,
    trainable: bool = False,
):
    """``(peft model, tokenizer)``: the base as saved (4-bit,
    unless ``quantize`` overrides it) with the adapters of ``adapter_dir``;
    in eval mode, or ready to resume training with ``trainable=True``."""
    from peft import PeftModel

    meta = json.loads((Path(adapter_dir) / META_FILE).read_text())
    quantize = quantize or meta["quantize"]
    model, _ = load_causal_lm(meta["base"], quantize, device)
    if trainable:
        model = prepare_for_training(model, quantize, gradient_checkpointing=False)
    model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
    model.train(trainable)
    return model, load_causal_tokenizer(adapter_dir, model.config)


def merge_adapters(adapter_dir: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Fold the adapters into a full-precision base, ``W ← W + (α/r)·B·A``, and
    save a plain HF folder (safetensors + tokenizer + ``generative.json``).

    The base is loaded in float32 (saved in ``dtype``), not NF4: merging into
    4-bit weights would requantize ``W + ΔW`` and lose ΔW's small updates. So
    the merged model reproduces *full-precision base + adapters* (to float
    rounding), and the trained *NF4 base + adapters* only up to the NF4
    quantization error.
    """
    model, tokenizer = load_adapters(adapter_dir, device="cpu", quantize="none")
    merged = model.merge_and_unload().to(dtype)
    record_tokenizer(merged, tokenizer)
    out_dir = Path(out_dir)
    merged.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    meta = json.loads((Path(adapter_dir) / META_FILE).read_text())
    meta.update(quantize="none", merged_from=str(adapter_dir), dtype=str(dtype).removeprefix("torch."))
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir
