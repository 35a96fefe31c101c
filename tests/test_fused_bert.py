"""The fused scoring forward of BERT classifiers gives transformers' logits (issue 15)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

from kd.data.batching import TokenizedSet
from kd.eval.inference import predict_tokenized, scoring_model
from models.fused_bert import FusedBertClassifier, fusable, fuse_bert_classifier


def tiny_bert(seed: int = 0, **overrides) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = dict(vocab_size=80, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                  max_position_embeddings=64, num_labels=3, initializer_range=0.2)
    return BertForSequenceClassification(BertConfig(**{**config, **overrides})).eval()


def padded_batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``(B, T)`` padded with 0 to the longest of ``lengths``, and their mask."""
    rng = np.random.default_rng(seed)
    ids = torch.zeros((len(lengths), max(lengths)), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.from_numpy(rng.integers(1, 80, size=n))
        mask[row, :n] = 1
    return ids, mask


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new", "relu"])
def test_fused_logits_equal_transformers_on_a_padded_batch(hidden_act):
    model = tiny_bert(hidden_act=hidden_act)
    ids, mask = padded_batch([2, 17, 9, 30, 30, 5])
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
        fused = FusedBertClassifier(model).eval()(ids, mask).logits
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)


def test_fused_logits_equal_transformers_in_bf16_and_under_autocast():
    model = tiny_bert()
    ids, mask = padded_batch([3, 12, 25])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(input_ids=ids, attention_mask=mask).logits.float()
        fused = FusedBertClassifier(model)(ids, mask).logits.float()
    torch.testing.assert_close(fused, expected, rtol=0.02, atol=0.03)
    model = model.to(torch.bfloat16)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits.float()
        fused = FusedBertClassifier(model)(ids, mask)
    assert fused.logits.dtype == torch.bfloat16
    torch.testing.assert_close(fused.logits.float(), expected, rtol=0.02, atol=0.03)


def test_no_mask_means_nothing_is_padded():
    model = tiny_bert()
    ids, mask = padded_batch([11, 11])
    fused = FusedBertClassifier(model).eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(ids).logits, fused(ids, mask).logits)


def test_scoring_model_scores_each_url_as_transformers_does_alone():
    model = tiny_bert()
    rng = np.random.default_rng(1)
    data = TokenizedSet([[2, *rng.integers(5, 80, size=rng.integers(1, 40)).tolist(), 3] for _ in range(25)],
                        np.zeros(25, dtype=np.int64), pad_token_id=0)
    scorer = scoring_model(model)
    assert isinstance(scorer, FusedBertClassifier) and scorer.config is model.config
    with torch.no_grad():
        alone = torch.cat([model(input_ids=torch.tensor([ids])).logits for ids in data.input_ids])
    torch.testing.assert_close(predict_tokenized(scorer, data, batch_size=8), alone, rtol=1e-5, atol=1e-5)


def test_the_fused_model_shares_all_but_the_qkv_weights():
    model = tiny_bert()
    fused = FusedBertClassifier(model)
    assert fused.embeddings.word_embeddings.weight is model.bert.embeddings.word_embeddings.weight
    assert fused.classifier.weight is model.classifier.weight
    layer, source = fused.layers[1], model.bert.encoder.layer[1].attention.self
    assert layer.up.weight is model.bert.encoder.layer[1].intermediate.dense.weight
    torch.testing.assert_close(layer.qkv.weight, torch.cat([source.query.weight, source.key.weight, source.value.weight]))


def test_models_that_cannot_be_fused_are_scored_as_they_are():
    roberta = RobertaForSequenceClassification(RobertaConfig(vocab_size=80, hidden_size=48, num_hidden_layers=1,
                                                            num_attention_heads=4, intermediate_size=96)).eval()
    assert "not a BERT" in fusable(roberta) and fuse_bert_classifier(roberta) is roberta
    int8 = torch.ao.quantization.quantize_dynamic(tiny_bert(), {torch.nn.Linear}, dtype=torch.qint8)
    assert "quantized" in fusable(int8) and scoring_model(int8) is int8
    decoder = tiny_bert(is_decoder=True)
    assert "decoder" in fusable(decoder) and scoring_model(decoder) is decoder
    assert fusable(tiny_bert()) is None
