"""Hidden-state matching, layer maps, MiniLMv2 attention relations and capture_qkv."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical, kl_divergence
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
)

from losses.attention import attention_relation_kl, capture_qkv, find_qkv_projections, relation_log_probs
from losses.hidden import HiddenStateMatching, hidden_cosine, hidden_mse, layer_map

# --------------------------------------------------------------------------- layer maps


def test_layer_maps():
    assert layer_map("uniform", 3, 6) == [(1, 2), (2, 4), (3, 6)]
    assert layer_map("uniform", 4, 6) == [(1, 1), (2, 3), (3, 4), (4, 6)]
    assert layer_map("last", 3, 12) == [(3, 12)]
    assert layer_map("1-2+2-4+0-0", 3, 6) == [(1, 2), (2, 4), (0, 0)]
    assert layer_map([(1, 5)], 3, 6) == [(1, 5)]


@pytest.mark.parametrize("spec", ["1-7", "4-1", "1-2+", "1:2", "every", ""])
def test_bad_layer_maps_are_errors(spec):
    with pytest.raises(ValueError, match="layer map"):
        layer_map(spec, 3, 6)


# --------------------------------------------------------------------------- hidden-state distances


def test_hidden_distances_closed_form():
    s = torch.tensor([[[1.0, 0.0], [3.0, 4.0]]])  # (B=1, T=2, H=2)
    t = torch.tensor([[[0.0, 1.0], [3.0, 4.0]]])
    torch.testing.assert_close(hidden_mse(s, t), torch.tensor([[1.0, 0.0]]))  # mean over H of (1, 1)
    torch.testing.assert_close(hidden_cosine(s, t), torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(hidden_cosine(s, -t), torch.tensor([[1.0, 2.0]]))
    assert hidden_mse(s.bfloat16(), t.bfloat16()).dtype == torch.float32


def states(num_layers, width, seed, b=2, t=5):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, t, width, generator=g) for _ in range(num_layers + 1))


def test_matching_averages_over_the_mapped_layers():
    student, teacher = states(2, 8, 0), states(4, 8, 1)
    matching = HiddenStateMatching("mse", layer_map("uniform", 2, 4), 8, 8)
    assert matching.projections is None
    expected = (hidden_mse(student[1], teacher[2]) + hidden_mse(student[2], teacher[4])) / 2
    torch.testing.assert_close(matching(student, teacher), expected)

    cosine = HiddenStateMatching("cosine", layer_map("last", 2, 4), 8, 8)
    torch.testing.assert_close(cosine(student, teacher), 1 - F.cosine_similarity(student[2], teacher[4], dim=-1))


def test_projections_when_widths_differ():
    student, teacher = states(2, 6, 2), states(4, 10, 3)
    matching = HiddenStateMatching("mse", layer_map("uniform", 2, 4), 6, 10)
    assert len(matching.projections) == 2
    w = matching.projections[1]
    torch.testing.assert_close(matching(student, teacher)[0, 0],
                               (hidden_mse(matching.projections[0](student[1]), teacher[2])[0, 0]
                                + hidden_mse(w(student[2]), teacher[4])[0, 0]) / 2)
    matching(student, teacher).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in matching.parameters())
    with pytest.raises(ValueError, match="distance"):
        HiddenStateMatching("l1", [(1, 1)], 6, 10)


# --------------------------------------------------------------------------- attention relations


def test_relation_is_a_scaled_softmax_per_head():
    x = torch.randn(2, 5, 12)
    log_r = relation_log_probs(x, num_heads=3)
    assert log_r.shape == (2, 3, 5, 5)
    head = x[1, :, 4:8]  # head 1, d_r = 4
    torch.testing.assert_close(log_r[1, 1], torch.log_softmax(head @ head.T / math.sqrt(4), -1))
    with pytest.raises(ValueError, match="divisible"):
        relation_log_probs(x, num_heads=5)


def test_padded_keys_get_zero_probability():
    x = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    r = relation_log_probs(x, 2, mask).exp()
    assert (r[0, :, :, 3:] == 0).all()
    torch.testing.assert_close(r[0, :, :3, :3], relation_log_probs(x[:1, :3], 2).exp()[0])


def reference_relation_kl(student_qkv, teacher_qkv, heads):
    """Σ over Q, K, V of the mean over heads of KL(teacher row ‖ student row), one example, no padding."""
    total = 0.0
    for s, t in zip(student_qkv, teacher_qkv):
        s_heads, t_heads = s.double().chunk(heads, -1), t.double().chunk(heads, -1)
        for sh, th in zip(s_heads, t_heads):
            student_rel = Categorical(logits=sh @ sh.T / math.sqrt(sh.shape[-1]))
            teacher_rel = Categorical(logits=th @ th.T / math.sqrt(th.shape[-1]))
            total = total + kl_divergence(teacher_rel, student_rel) / heads
    return total  # (T,)


def test_attention_relation_kl_matches_reference_and_direction():
    g = torch.Generator().manual_seed(4)
    student = tuple(torch.randn(1, 6, 8, generator=g) for _ in range(3))
    teacher = tuple(torch.randn(1, 6, 16, generator=g) for _ in range(3))  # wider teacher, same heads
    value = attention_relation_kl(student, teacher, num_heads=2)
    assert value.shape == (1, 6) and value.dtype == torch.float32
    expected = reference_relation_kl([x[0] for x in student], [x[0] for x in teacher], 2)
    torch.testing.assert_close(value[0].double(), expected, rtol=1e-4, atol=1e-6)
    swapped = reference_relation_kl([x[0] for x in teacher], [x[0] for x in student], 2)
    assert not torch.allclose(value[0].double(), swapped, rtol=1e-2)
    assert attention_relation_kl(teacher, teacher, 2).abs().max() < 1e-6


def test_attention_relation_ignores_padding():
    g = torch.Generator().manual_seed(5)
    student = [torch.randn(2, 6, 8, generator=g, requires_grad=True) for _ in range(3)]
    teacher = [torch.randn(2, 6, 8, generator=g) for _ in range(3)]
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6])
    value = attention_relation_kl(student, teacher, 2, mask)
    # The valid rows of example 0 equal the unpadded computation; changing padded tokens changes nothing there.
    torch.testing.assert_close(value[0, :4], attention_relation_kl([x[:1, :4] for x in student],
                                                                   [x[:1, :4] for x in teacher], 2)[0])
    perturbed = [x.detach().clone() for x in teacher]
    for x in perturbed:
        x[0, 4:] = 100.0
    torch.testing.assert_close(attention_relation_kl(student, perturbed, 2, mask)[0, :4], value[0, :4])
    value[0, :4].sum().backward()
    assert all(torch.isfinite(x.grad).all() and (x.grad[0, 4:] == 0).all() for x in student)


# --------------------------------------------------------------------------- capture_qkv on tiny models

torch.manual_seed(0)
BERT = BertForSequenceClassification(
    BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100)
).eval()
DISTILBERT = DistilBertForSequenceClassification(
    DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, vocab_size=100)
).eval()
LLAMA = LlamaForCausalLM(
    LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=64, vocab_size=100)
).eval()
INPUT_IDS = torch.randint(1, 100, (2, 7), generator=torch.Generator().manual_seed(6))
ATTENTION_MASK = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])


@pytest.mark.parametrize(
    "model,modules",
    [
        (BERT, lambda m, i: m.bert.encoder.layer[i].attention.self),
        (DISTILBERT, lambda m, i: m.distilbert.transformer.layer[i].attention),
        (LLAMA, lambda m, i: m.model.layers[i].self_attn),
    ],
)
def test_find_qkv_projections(model, modules):
    for layer in (0, 1, -1, -2):
        found = find_qkv_projections(model, layer)
        attention = modules(model, layer % 2)
        expected = [getattr(attention, n) for n in ("query", "key", "value", "q_lin", "k_lin", "v_lin",
                                                    "q_proj", "k_proj", "v_proj") if hasattr(attention, n)]
        assert list(found) == expected
    with pytest.raises(IndexError):
        find_qkv_projections(model, 2)


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="known layouts: bert"):
        find_qkv_projections(torch.nn.Sequential(torch.nn.Linear(4, 4)), 0)


@torch.no_grad()
def test_capture_qkv_records_the_projections_of_the_layer_input():
    with capture_qkv(BERT, [-1, 0]) as qkv:
        out = BERT(input_ids=INPUT_IDS, attention_mask=ATTENTION_MASK, output_hidden_states=True)
    attention = BERT.bert.encoder.layer[1].attention.self
    layer_input = out.hidden_states[1]  # the output of block 0 is the input of block 1
    q, k, v = qkv[-1]
    torch.testing.assert_close(q, attention.query(layer_input))
    torch.testing.assert_close(k, attention.key(layer_input))
    torch.testing.assert_close(v, attention.value(layer_input))
    torch.testing.assert_close(qkv[0][0], BERT.bert.encoder.layer[0].attention.self.query(out.hidden_states[0]))
    # Our hooks are gone after the with block (transformers installs its own on other modules).
    assert not any(m._forward_hooks for layer in (0, 1) for m in find_qkv_projections(BERT, layer))


@torch.no_grad()
def test_capture_qkv_on_distilbert_and_llama():
    with capture_qkv(DISTILBERT, 0) as qkv:
        out = DISTILBERT(input_ids=INPUT_IDS, attention_mask=ATTENTION_MASK, output_hidden_states=True)
    torch.testing.assert_close(qkv[0][2], DISTILBERT.distilbert.transformer.layer[0].attention.v_lin(out.hidden_states[0]))

    with capture_qkv(LLAMA, -1) as qkv:
        out = LLAMA(input_ids=INPUT_IDS, attention_mask=ATTENTION_MASK, output_hidden_states=True)
    block = LLAMA.model.layers[1]
    q, k, v = qkv[-1]
    assert q.shape == (2, 7, 32) and k.shape == v.shape == (2, 7, 16)  # grouped-query attention
    torch.testing.assert_close(k, block.self_attn.k_proj(block.input_layernorm(out.hidden_states[1])))
    # Relations work across widths as long as the number of relation heads divides them.
    assert attention_relation_kl(qkv[-1], qkv[-1], 4, ATTENTION_MASK).abs().max() < 1e-5
