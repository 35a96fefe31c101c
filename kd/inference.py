"""Batched scoring of URLs with a sequence classifier: the one path that the
training-time evaluation, ``kd.evaluate``, the quantization report and
``kd.predict`` all share."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from kd.batching import TokenizedSet, collate, eval_batches, tokenize
from kd.data import Examples
from kd.urls import normalize_url


def resolve_device(device: torch.device | str | None) -> torch.device:
    """``device`` as a ``torch.device``; ``None`` means CUDA if available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


AUTOCAST_PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""Scoring precisions that run the forward under autocast; every other one
(``fp32`` and the quantized precisions, ``nf4`` ...) runs the model as loaded."""


def scoring_precision_name(amp_dtype: torch.dtype | None) -> str:
    """The name recorded in ``metrics.json`` for scoring under ``amp_dtype``
    (``None``: no autocast, ``fp32``)."""
    names = {dtype: name for name, dtype in AUTOCAST_PRECISIONS.items()}
    return "fp32" if amp_dtype is None else names[amp_dtype]


def scoring_autocast(precision: str) -> torch.dtype | None:
    """The autocast dtype of a recorded scoring precision (``None``: run as loaded)."""
    return AUTOCAST_PRECISIONS.get(precision)


def saved_scoring(model_dir: str | Path, default_precision: str = "fp32") -> tuple[float, str, str]:
    """``(threshold, scoring precision, where they came from)`` for a model folder.

    Training, ``kd.evaluate`` and ``quantize.py`` write both into
    ``MODEL_DIR/metrics.json``: the threshold was tuned on probabilities
    computed in that precision, so every tool that applies the threshold must
    score in it too. Without the file: 0.5 and ``default_precision``.
    """
    metrics = Path(model_dir) / "metrics.json"
    if metrics.is_file():
        saved = json.loads(metrics.read_text())
        if saved.get("threshold") is not None:
            return float(saved["threshold"]), saved.get("scoring_precision", default_precision), str(metrics)
    return 0.5, default_precision, "default"


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work on ``device`` (timings need it; a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def predict_tokenized(
    model: torch.nn.Module,
    data: TokenizedSet,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Logits ``(N, C)`` as float32 for a tokenised set, in its order.

    Batches are length-sorted and padded per batch; ``autocast_dtype`` (e.g.
    bf16 on CUDA) runs the forward under autocast.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    out = np.empty((len(data), model.config.num_labels), dtype=np.float32)
    for idx in tqdm(eval_batches(data.lengths, batch_size), desc="scoring", unit="batch", disable=not progress, leave=False):
        batch = collate(data, idx)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).logits
        out[idx] = logits.float().cpu().numpy()
    return out


def predict_logits(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    batch_size: int = 256,
    max_length: int = 128,
    device: torch.device | str | None = None,
    normalize: bool = True,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Logits ``(N, C)`` as float32 for raw ``texts``, in their given order.

    The texts are normalised with :func:`kd.urls.normalize_url` first unless
    ``normalize=False`` (pass already-normalised URLs that way).
    """
    texts = [normalize_url(t) for t in texts] if normalize else list(texts)
    data = tokenize(Examples(texts, [0] * len(texts)), tokenizer, max_length)
    return predict_tokenized(model, data, batch_size=batch_size, device=device, autocast_dtype=autocast_dtype, progress=progress)


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Probability of the positive class (label 1, phishing) from ``(N, C)`` logits."""
    return torch.softmax(torch.from_numpy(logits).float(), dim=-1)[:, 1].numpy()


def predict_proba(model, tokenizer, texts: Sequence[str], **kwargs) -> np.ndarray:
    """Probability of phishing per text, ``(N,)``; keyword arguments as :func:`predict_logits`."""
    return probabilities(predict_logits(model, tokenizer, texts, **kwargs))
