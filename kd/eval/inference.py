"""Batched scoring of URLs with a sequence classifier: the one path that the
training-time evaluation, ``kd.evaluate``, the quantization report and
``kd.predict`` all share. Logits stay torch tensors; :func:`probabilities` is
where they become numpy, for the metrics."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from kd.data.batching import TokenizedSet, collate, eval_batches, tokenize
from kd.data.prompts import PromptFormat, tokenize_prompts
from kd.data.splits import Examples
from kd.data.urls import normalize_url
from kd.errors import UsageError
from models.encoder import phishing_index
from models.paths import NO_REMOTE_CODE, resolve_model_path
from models.verbalizer import VerbalizerClassifier


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s first parameter; the CPU for a model with none
    (an ONNX Runtime session, :class:`models.onnx.OnnxClassifier`)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


@torch.inference_mode()
def predict_tokenized(
    model: torch.nn.Module,
    data: TokenizedSet,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Logits ``(N, C)`` float32 on the CPU for a tokenised set, in its order.

    The one scoring path (evaluation, ``kd.evaluate``, ``kd.predict``, the
    bench): the examples are sorted by length (:func:`kd.data.batching.eval_batches`),
    cut into batches of ``batch_size`` padded to their own longest member, and
    each batch's logits are written back to its examples' input positions, so
    little compute goes to padding and the order is the caller's. Row ``i``
    equals scoring example ``i`` alone, up to float rounding. ``autocast_dtype``
    (e.g. bf16) runs the forward under autocast. ``model`` may also be an ONNX
    Runtime session behind the same interface (:class:`models.onnx.OnnxClassifier`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    if model.training:  # eval() walks every submodule: about 0.5 ms, a seventh of a batch-1 call on the CPU
        model.eval()
    device = torch.device(device) if device is not None else model_device(model)
    out = torch.empty((len(data), model.config.num_labels), dtype=torch.float32)
    batches = eval_batches(data.lengths, batch_size)
    if progress:  # a disabled tqdm still costs about 0.05 ms, a thirtieth of a compiled batch-1 call
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="scoring", unit="batch", leave=False)
    for idx in batches:
        batch = collate(data, idx)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).logits
        out[torch.from_numpy(idx)] = logits.float().cpu()
    return out


def scoring_model(model: torch.nn.Module, *, compile: bool = False) -> torch.nn.Module:
    """``model`` in the form that scores fastest, for inference only (it may share
    weights with ``model``; do not train either afterwards).

    - A BERT classifier in fp32 or bf16 becomes a
      :class:`models.fused_bert.FusedBertClassifier` (same logits up to rounding,
      one QKV matmul per layer, far less Python per call); other models stay as
      they are.
    - ``compile``: ``torch.compile`` with dynamic shapes and inductor's freezing
      (in inference mode the weights become constants, pre-packed once for the
      matmul kernels instead of reordered at every call). On the CPU it uses the
      ``max-autotune-no-cudagraphs`` mode, whose C++ GEMM templates (AMX or
      AVX-512) beat oneDNN on these small matrices, and inductor's C++ wrapper,
      which calls the kernels without Python in between (0.15 ms of a 1.5 ms
      batch-1 call). Batch 1 and the first larger batch each compile once, 23 to
      52 s in all on the 2-core CPU (``benchmarks/cpu-scoring.md``), so it pays on
      long inputs or in a long-lived process. ``freezing`` and ``cpp_wrapper`` are
      inductor-wide settings, read when a graph compiles: they stay set for the
      rest of the process.

    The result takes ``.config`` and ``.parameters()`` like ``model``.
    """
    from models.fused_bert import fuse_bert_classifier

    model = fuse_bert_classifier(model.eval())
    if not compile:
        return model
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # read when the first call compiles; applies to inference graphs only
    if next(model.parameters()).device.type != "cpu":
        return torch.compile(model, dynamic=True)
    inductor_config.cpp_wrapper = True
    return torch.compile(model, dynamic=True, mode="max-autotune-no-cudagraphs")


POSITIONS_FROM_PADDING_ID = ("roberta", "xlm-roberta", "camembert", "mpnet")
"""Model types whose position ids start after the padding id, so that ``pad_token_id + 1``
rows of the position table are never used by a token."""


def check_max_length(model_path: str | Path, max_length: int) -> None:
    """Refuse ``max_length`` (``--max-length``) above the tokens the model at
    ``model_path`` can place: ``max_position_embeddings``, less ``pad_token_id + 1``
    for :data:`POSITIONS_FROM_PADDING_ID`. Longer URLs would index past the
    position table, an IndexError in the middle of scoring; call it before
    loading the model or reading data."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolve_model_path(str(model_path)), **NO_REMOTE_CODE)
    positions = getattr(config, "max_position_embeddings", None)
    if positions is None:
        return
    if config.model_type in POSITIONS_FROM_PADDING_ID:
        positions -= config.pad_token_id + 1
    if max_length > positions:
        raise UsageError(f"--max-length {max_length} is more than {model_path} can read: its position table "
                         f"holds {positions} tokens (max_position_embeddings in config.json); give at most {positions}")


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
) -> torch.Tensor:
    """Logits ``(N, C)`` float32 on the CPU for raw ``texts``, in their given order.

    The texts are normalised with :func:`kd.data.urls.normalize_url` first unless
    ``normalize=False`` (pass already-normalised URLs that way).
    """
    texts = [normalize_url(t) for t in texts] if normalize else list(texts)
    data = tokenize(Examples(texts, [0] * len(texts)), tokenizer, max_length)
    return predict_tokenized(model, data, batch_size=batch_size, device=device, autocast_dtype=autocast_dtype, progress=progress)


def probabilities(logits: torch.Tensor, phishing_column: int) -> np.ndarray:
    """Probability of phishing, ``softmax(logits)[:, phishing_column]``, from ``(N, C)``
    logits, as the ``(N,)`` numpy array that the metrics (scikit-learn) and the CSV
    writers read; ``phishing_column`` is the model's :func:`phishing_column`."""
    return torch.softmax(logits.float(), dim=-1)[:, phishing_column].numpy()


def phishing_column(model: torch.nn.Module) -> int:
    """The logit column of the phishing class of ``model``, from its ``config.id2label``
    (:func:`models.encoder.phishing_index`)."""
    return phishing_index(model.config)


def predict_proba(model, tokenizer, texts: Sequence[str], **kwargs) -> np.ndarray:
    """Probability of phishing per text, ``(N,)``; keyword arguments as :func:`predict_logits`."""
    return probabilities(predict_logits(model, tokenizer, texts, **kwargs), phishing_column(model))


def class_probabilities(
    model,
    tokenizer,
    urls: Sequence[str],
    prompt: PromptFormat = PromptFormat(),
    batch_size: int = 32,
) -> torch.Tensor:
    """``(N, C)`` float32 class probabilities (column 1: phishing) of ``urls``,
    in their order: :class:`VerbalizerClassifier` scored by
    ``kd.eval.inference.predict_tokenized``, the evaluation's own path."""
    data = tokenize_prompts(Examples(list(urls), [0] * len(urls)), tokenizer, prompt)
    classifier = VerbalizerClassifier(model, prompt.token_ids(tokenizer))
    return predict_tokenized(classifier, data, batch_size=batch_size).softmax(-1)
