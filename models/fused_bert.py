"""An inference-only forward for BERT sequence classifiers, for scoring.

``transformers``' ``BertForSequenceClassification`` spends most of a small
batch in Python: per layer three separate Q, K, V projections, an attention
dispatch, output dataclasses, and under ``torch.compile`` 607 guards checked
at every call. :class:`FusedBertClassifier` computes the same logits with one
``(3H, H)`` QKV matmul per layer, ``F.scaled_dot_product_attention``, and the
pooler only on the ``[CLS]`` row (230 guards). On the 2-core CPU a batch-1
call of the 3-layer bf16 student, end to end, takes 2.22 ms instead of 3.09
(``benchmarks/cpu-scoring.md``); at batch 256 the two are equally fast.

For ``x`` of shape ``(B, T, H)``, ``h`` heads of size ``d = H / h``, and a
key mask ``m`` of shape ``(B, T)`` (1 = real token):

    x   = LayerNorm(E_word[ids] + E_pos[0..T-1] + E_type[0])
    per layer:
      q, k, v = split(x W_qkv^T + b_qkv)                 each (B, h, T, d)
      a   = softmax(q k^T / sqrt(d) + log m) v           padded keys get no weight
      x   = LayerNorm(x + a W_o^T + b_o)
      x   = LayerNorm(x + act(x W_up^T + b_up) W_down^T + b_down)
    logits = tanh(x[:, 0] W_pool^T + b_pool) W_cls^T + b_cls    (B, C)

which is ``transformers``' forward in eval mode (dropout off, token type 0,
absolute positions), up to float rounding. The module shares every tensor with
the model it is built from except the concatenated QKV weights.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class ScoringOutput(NamedTuple):
    """What the scoring path reads from a classifier's output: ``logits`` ``(B, C)``."""

    logits: torch.Tensor


class FusedBertLayer(nn.Module):
    """One encoder layer of :class:`FusedBertClassifier`, built from a ``transformers`` ``BertLayer``."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        attention = layer.attention.self
        self.heads = attention.num_attention_heads
        projections = (attention.query, attention.key, attention.value)
        hidden = attention.query.in_features
        self.qkv = nn.Linear(hidden, 3 * hidden, device=attention.query.weight.device, dtype=attention.query.weight.dtype)
        with torch.no_grad():
            self.qkv.weight.copy_(torch.cat([p.weight for p in projections]))
            self.qkv.bias.copy_(torch.cat([p.bias for p in projections]))
        self.attention_out = layer.attention.output.dense
        self.attention_norm = layer.attention.output.LayerNorm
        self.up = layer.intermediate.dense
        self.act = layer.intermediate.intermediate_act_fn
        self.down = layer.output.dense
        self.output_norm = layer.output.LayerNorm

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """``x`` ``(B, T, H)``, ``key_mask`` ``(B, 1, 1, T)`` bool (True = attend) or None -> ``(B, T, H)``."""
        batch, length, hidden = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, hidden // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        x = self.attention_norm(x + self.attention_out(attended.transpose(1, 2).reshape(batch, length, hidden)))
        return self.output_norm(x + self.down(self.act(self.up(x))))


class FusedBertClassifier(nn.Module):
    """Logits of a ``BertForSequenceClassification`` in eval mode, for scoring only
    (no dropout, no gradients needed, no token types); see the module docstring.
    ``config`` is the model's, so code that reads ``config.num_labels`` works on either."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.config = model.config
        self.embeddings = model.bert.embeddings
        self.layers = nn.ModuleList(FusedBertLayer(layer) for layer in model.bert.encoder.layer)
        self.pooler = model.bert.pooler.dense
        self.classifier = model.classifier

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> ScoringOutput:
        """``input_ids`` ``(B, T)``; ``attention_mask`` ``(B, T)``, 1 for real tokens, 0 for padding
        (None: nothing is padded) -> ``ScoringOutput(logits (B, C))``."""
        e = self.embeddings
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = e.word_embeddings(input_ids) + e.position_embeddings(positions) + e.token_type_embeddings.weight[0]
        x = e.LayerNorm(x)
        key_mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()
        for layer in self.layers:
            x = layer(x, key_mask)
        return ScoringOutput(self.classifier(torch.tanh(self.pooler(x[:, 0]))))


def fusable(model: nn.Module) -> str | None:
    """Why ``model`` cannot become a :class:`FusedBertClassifier` (None: it can).

    It must be a ``transformers`` BERT sequence classifier (``model_type`` ``bert``,
    with its pooler) whose encoder projections are plain ``nn.Linear`` layers,
    so fp32 or bf16: the quantized precisions keep their own linear layers.
    """
    if type(model).__name__ != "BertForSequenceClassification" or getattr(model.config, "model_type", None) != "bert":
        return f"{type(model).__name__} is not a BERT sequence classifier"
    if model.bert.pooler is None:
        return "the BERT model has no pooler"
    if getattr(model.config, "is_decoder", False):
        return "the BERT model is configured as a decoder"
    linears = [m for m in model.bert.encoder.modules() if "Linear" in type(m).__name__]
    if any(type(m) is not nn.Linear for m in linears):  # bitsandbytes' and torch's int8 layers subclass or mimic it
        return "its encoder's linear layers are quantized"
    return None


def fuse_bert_classifier(model: nn.Module) -> nn.Module:
    """``model`` as a :class:`FusedBertClassifier` in eval mode when :func:`fusable`, else ``model`` itself."""
    if fusable(model) is not None:
        return model
    return FusedBertClassifier(model).eval()
