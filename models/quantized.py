"""Sequence classifiers in one of six precisions: load, save, reload.

============  ==========================================================  ===========
precision     the encoder's ``nn.Linear`` weights                         devices
============  ==========================================================  ===========
fp32          float32                                                     any
bf16          bfloat16 (the whole model)                                  any
nf4           bitsandbytes 4-bit NormalFloat, blocks of 64, absmax        CPU, CUDA
              double-quantized (8-bit, blocks of 256)
fp4           bitsandbytes 4-bit float, blocks of 64                      CPU, CUDA
int8          bitsandbytes LLM.int8: per-row int8, activation columns     CPU, CUDA
              above 6.0 kept in fp16
dynamic-int8  torch dynamic int8: per-tensor int8 weights, activations    CPU
              quantized per batch
============  ==========================================================  ===========

In the quantized precisions the embeddings, LayerNorms, the pooler and the
classification head stay in the compute dtype (float32 on CPU, bf16 on CUDA).
What each precision costs and saves on CPU and GPU is measured in
``benchmarks/`` and docs/quantize.md.

A folder written by :func:`save_quantized` loads back with
``load_classifier(folder)`` in the precision it was saved in, without
quantizing again.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal, get_args

import torch
from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
from torch.ao.quantization import quantize_dynamic
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from models.device import resolve_device
from models.encoder import phishing_index
from models.lora import META_FILE as GENERATIVE_META
from models.paths import (NO_REMOTE_CODE, ModelFolderError, check_tokenizer, check_weights, record_tokenizer,
                          resolve_model_path)

Precision = Literal["fp32", "bf16", "nf4", "fp4", "int8", "dynamic-int8"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
BNB_PRECISIONS = ("nf4", "fp4", "int8")
QUANTIZED_PRECISIONS = (*BNB_PRECISIONS, "dynamic-int8")

HEAD_MODULES = ("classifier", "pre_classifier", "pooler.dense")
"""Linear layers kept in the compute dtype: a 2-output head gains nothing from
quantization, and bitsandbytes' CPU 4-bit kernel asserts out_features % 32 == 0.
transformers 5 matches these names at a module boundary as a prefix or a
suffix, so ``"pooler"`` alone would not match ``bert.pooler.dense``."""

DYNAMIC_INT8_MARKER = "dynamic_int8.json"
"""File that marks a folder as ``dynamic-int8``: its safetensors hold the
float32 weights, quantized on load."""


def _compute_dtype(device: torch.device) -> torch.dtype:
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _bnb_precision(quantization_config: dict, where: str) -> Precision:
    if quantization_config.get("quant_method") != "bitsandbytes":
        raise ValueError(
            f"{where} is quantized with {quantization_config.get('quant_method')!r}; "
            f"only bitsandbytes ({', '.join(BNB_PRECISIONS)}) and dynamic-int8 load here"
        )
    if quantization_config.get("load_in_8bit"):
        return "int8"
    return quantization_config["bnb_4bit_quant_type"]


def _check_skip_modules(quantization_config: dict, where: str) -> None:
    """Refuse a saved bitsandbytes folder whose ``llm_int8_skip_modules`` are not
    :data:`HEAD_MODULES`, the ones :func:`bnb_config` keeps unquantized: the list
    says which saved weights are packed and which are plain, so a changed one
    misreads them (a traceback deep in the loader, or a head quantized on load)."""
    skipped = quantization_config.get("llm_int8_skip_modules")
    if sorted(skipped or []) != sorted(HEAD_MODULES):
        raise ModelFolderError(
            f"{where} has llm_int8_skip_modules {skipped} in its quantization_config, but this project quantizes "
            f"everything except {list(HEAD_MODULES)}: the config does not describe its weights; quantize the fp32 "
            "model again with quantize.py"
        )


def saved_precision(path: str | Path) -> Precision:
    """The precision a checkpoint folder holds: ``nf4`` / ``fp4`` / ``int8``
    from its config's ``quantization_config``, ``dynamic-int8`` from the
    marker file, else ``bf16`` or ``fp32`` from the config's dtype. A
    bitsandbytes folder whose skip modules were altered is refused."""
    path = resolve_model_path(str(path))
    if (Path(path) / DYNAMIC_INT8_MARKER).is_file():
        return "dynamic-int8"
    config = AutoConfig.from_pretrained(path, **NO_REMOTE_CODE)
    quantization_config = getattr(config, "quantization_config", None)
    if quantization_config is not None:
        precision = _bnb_precision(quantization_config, path)
        _check_skip_modules(quantization_config, path)
        return precision
    return "bf16" if config.dtype == torch.bfloat16 else "fp32"


def precision_of(model: torch.nn.Module) -> Precision:
    """The precision of a loaded model (the inverse of :func:`load_classifier`)."""
    if any(isinstance(m, DynamicInt8Linear) for m in model.modules()):
        return "dynamic-int8"
    quantization_config = getattr(model.config, "quantization_config", None)
    if quantization_config is not None:
        if not isinstance(quantization_config, dict):
            quantization_config = quantization_config.to_dict()
        return _bnb_precision(quantization_config, "the model")
    return "bf16" if model.dtype == torch.bfloat16 else "fp32"


def _check_request(precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    if precision == "dynamic-int8" and device.type != "cpu":
        raise ValueError(
            f"dynamic-int8 runs on CPU only (torch's quantized kernels), not on {device}; "
            f"use {', '.join(BNB_PRECISIONS)} there"
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"bf16 is not supported by {torch.cuda.get_device_name(device)}")
    if precision in BNB_PRECISIONS:
        try:
            import bitsandbytes
        except ImportError as err:
            raise ValueError(f"{precision} needs bitsandbytes: pip install bitsandbytes ({err})") from err
        if device.type not in bitsandbytes.supported_torch_devices:
            raise ValueError(
                f"{precision} (bitsandbytes) cannot run on {device}; this bitsandbytes "
                f"supports {sorted(bitsandbytes.supported_torch_devices)}"
            )


def bnb_config(precision: Precision, device: torch.device | str | None = None):
    """The ``BitsAndBytesConfig`` for ``nf4``, ``fp4`` or ``int8`` on ``device``."""
    from transformers import BitsAndBytesConfig

    device = resolve_device(device)
    if precision == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(HEAD_MODULES))
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=precision,
        bnb_4bit_use_double_quant=precision == "nf4",
        bnb_4bit_compute_dtype=_compute_dtype(device),
        llm_int8_skip_modules=list(HEAD_MODULES),
    )


def _not_int8_cast_message(record: logging.LogRecord) -> bool:
    # LLM.int8 quantizes activations from fp16 by design; bitsandbytes logs that
    # cast on every layer of every forward when the model runs in float32/bf16.
    return "will be cast from" not in record.getMessage()


def _load_bnb(path: str, precision: Precision, device: torch.device, pre_quantized: bool):
    import bitsandbytes as bnb

    if precision == "int8":  # addFilter ignores a filter that is already there
        logging.getLogger("bitsandbytes.autograd._functions").addFilter(_not_int8_cast_message)
    compute_dtype = _compute_dtype(device)
    model = AutoModelForSequenceClassification.from_pretrained(
        path,
        dtype=compute_dtype,
        device_map={"": str(device)},
        **NO_REMOTE_CODE,
        **({} if pre_quantized else {"quantization_config": bnb_config(precision, device)}),
    )
    # A folder quantized on CUDA stores compute dtype bf16, which is much slower than float32 on CPU.
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.compute_dtype = compute_dtype
    return model


def _is_head(name: str) -> bool:
    """Whether module ``name`` matches :data:`HEAD_MODULES` the way transformers matches them."""
    return any(name == h or name.endswith("." + h) or name.startswith(h + ".") for h in HEAD_MODULES)


def _quantize_dynamic_int8(model: torch.nn.Module) -> torch.nn.Module:
    names = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not _is_head(n)}
    return quantize_dynamic(model, names, dtype=torch.qint8, inplace=True)


def load_classifier(
    path: str | Path,
    precision: Precision | None = None,
    device: torch.device | str | None = None,
):
    """``(model, tokenizer)`` from a sequence-classifier folder, in eval mode.

    ``precision=None`` loads the folder as saved (see :func:`saved_precision`).
    A plain fp32/bf16 folder loads in any precision, quantizing on the way;
    a quantized folder loads only in its own precision (there is nothing to
    re-quantize from). ``device=None``: CUDA if available, else CPU.
    """
    path = resolve_model_path(str(path))
    if (Path(path) / GENERATIVE_META).is_file():  # as a sequence classifier it would get a random head
        raise ModelFolderError(
            f"{path} holds a generative classifier from the QLoRA recipe ({GENERATIVE_META}: adapters or a merged "
            "causal LM), which scores a URL through its prompt, not as a sequence classifier; score it with "
            "kd.eval.inference.class_probabilities (model from models.lora.load_adapters, or AutoModelForCausalLM for "
            "a merged folder, with kd.data.prompts.read_prompt_format(folder))"
        )
    if Path(path).is_dir():  # a hub id is downloaded as safetensors by transformers itself
        check_weights(path)
    device = resolve_device(device)
    saved = saved_precision(path)
    precision = saved if precision is None else precision
    _check_request(precision, device)
    if saved in QUANTIZED_PRECISIONS and precision != saved:
        raise ValueError(
            f"{path} holds a {saved} model; it loads only as {saved} "
            f"(precision=None or {saved!r}), not as {precision}: quantize the fp32 checkpoint instead"
        )
    tokenizer = AutoTokenizer.from_pretrained(path, **NO_REMOTE_CODE)
    config = AutoConfig.from_pretrained(path, **NO_REMOTE_CODE)
    check_tokenizer(tokenizer, config, path)
    phishing_index(config, path)  # labels the scores cannot be read by: refuse before the weights load
    if precision in BNB_PRECISIONS:
        model = _load_bnb(path, precision, device, pre_quantized=saved == precision)
    else:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype, **NO_REMOTE_CODE)
        if precision == "dynamic-int8":
            model = _quantize_dynamic_int8(model)
        model.to(device)
    return model.eval(), tokenizer


def save_quantized(model, tokenizer, out_dir: str | Path, precision: Precision | None = None) -> Path:
    """Write ``model`` and ``tokenizer`` to ``out_dir`` so that
    ``load_classifier(out_dir)`` returns the same model without re-quantizing.

    ``precision`` (default: :func:`precision_of`) must match the model.

    - fp32, bf16, nf4, fp4, int8: ``save_pretrained`` (safetensors; the
      bitsandbytes packed weights and quantization state, with the config's
      ``quantization_config``).
    - dynamic-int8: torch's quantized tensors have no safetensors form and
      this project never unpickles, so the folder holds the float32 weights
      the model was quantized from (re-read from ``model.name_or_path``) and
      :data:`DYNAMIC_INT8_MARKER`; quantizing on load is deterministic.
      Its size on disk is therefore fp32's.

    A 4-bit model must be saved before its first forward on CPU: on a CPU with
    AVX512-BF16, bitsandbytes then repacks the weights for its CPU kernel
    (absmax de-nested, transposed, in bf16), and the inverse that runs on save
    re-quantizes the absmax (nf4: outputs shift) or leaves it transposed
    (fp4, no double quantization: the model is corrupted, in memory and on disk).
    """
    out_dir = Path(out_dir)
    actual = precision_of(model)
    if precision is not None and precision != actual:
        raise ValueError(f"asked to save as {precision}, but the model is {actual}")
    if any(getattr(getattr(p, "quant_state", None), "packing_format_for_cpu", False)
           for p in model.parameters()):
        raise ValueError(
            f"this {actual} model has already run on CPU, where bitsandbytes repacked its "
            "weights in a form that does not save back faithfully; quantize again with "
            "load_classifier(fp32_folder, precision) and save before the first forward"
        )
    record_tokenizer(model, tokenizer)
    if actual == "dynamic-int8":
        if not model.name_or_path:
            raise ValueError(
                "a dynamic-int8 model is saved as the float32 weights it was quantized from; "
                "load it with load_classifier(folder, 'dynamic-int8') so that folder is known"
            )
        fp32 = AutoModelForSequenceClassification.from_pretrained(model.name_or_path, dtype=torch.float32,
                                                                  **NO_REMOTE_CODE)
        fp32.save_pretrained(out_dir)
        marker = {"precision": "dynamic-int8", "quantized_from": str(model.name_or_path),
                  "linear_layers_skipped": list(HEAD_MODULES)}
        (out_dir / DYNAMIC_INT8_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    else:
        model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
