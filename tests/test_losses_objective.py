"""The spec grammar, the registry's errors and the objective's sums over items."""
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from losses import (
    TERMS,
    ModelOutputs,
    attention_relation_kl,
    build_objective,
    capture_qkv,
    cross_entropy,
    forward_kl,
    format_spec,
    generalized_jsd,
    hidden_mse,
    logit_mse,
    parse_spec,
    reverse_kl,
    skew_forward_kl,
    skew_reverse_kl,
    total_variation,
)
from losses.registry import Term

# --------------------------------------------------------------------------- grammar


def test_parse_spec():
    terms = parse_spec(" ce:0.5, rkl:0.5@T=2 ,jsd@beta=0.25@T=2,hidden_mse:1.0@map=1-2+2-4,attn_rel:2@layer=-1@heads=12")
    assert terms == [
        Term("ce", 0.5, {"chunk_size": None}),
        Term("rkl", 0.5, {"T": 2.0, "chunk_size": None}),
        Term("jsd", 1.0, {"beta": 0.25, "T": 2.0, "chunk_size": None}),
        Term("hidden_mse", 1.0, {"map": "1-2+2-4"}),
        Term("attn_rel", 2.0, {"layer": -1, "teacher_layer": -1, "heads": 12}),
    ]


def test_canonical_spec_round_trips():
    spec = "ce:0.5,skl:1e-3@skew=0.2@chunk_size=512,srkl,tvd:2@T=4,hidden_cos@map=last,logit_mse:0.1"
    canonical = format_spec(parse_spec(spec))
    assert canonical == ("ce:0.5,skl:0.001@skew=0.2@T=1.0@chunk_size=512,srkl:1.0@skew=0.1@T=1.0,tvd:2.0@T=4.0,"
                         "hidden_cos:1.0@map=last,logit_mse:0.1")
    assert parse_spec(canonical) == parse_spec(spec)
    objective = build_objective(spec, 8, 8, 2, 4)
    assert str(objective) == objective.spec == canonical
    assert format_spec(objective.terms) == canonical


def test_every_registered_term_parses_with_its_defaults():
    for name, term_type in TERMS.items():
        (term,) = parse_spec(name)
        assert term.params == {k: default for k, (_, default) in term_type.params.items()}


@pytest.mark.parametrize(
    "spec,match",
    [
        ("kl:1", "unknown loss term 'kl'.*known terms: ce, fkl, rkl, jsd"),
        ("rkl:1@temperature=2", "unknown parameter 'temperature'.*known parameters: T, chunk_size"),
        ("ce@T=2", "unknown parameter 'T' for 'ce'.*known parameters: chunk_size"),
        ("rkl:abc", "weight 'abc' is not a number"),
        ("rkl:-1", "weight must be"),
        ("rkl@T=hot", "T='hot' is not a valid float"),
        ("rkl@T=0", "T must be > 0"),
        ("jsd@beta=1.5", r"beta must be in \[0, 1\]"),
        ("skl@skew=-0.1", r"skew must be in \[0, 1\]"),
        ("attn_rel@heads=0", "heads must be >= 1"),
        ("rkl@chunk_size=1.5", "not a valid int"),
        ("rkl@T", "needs a value"),
        ("rkl@T=2@T=3", "given twice"),
        (" , ", "empty objective"),
    ],
)
def test_spec_errors_say_what_is_known(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_spec(spec)


def test_hidden_terms_need_the_model_sizes():
    with pytest.raises(ValueError, match="student_hidden_size=, teacher_hidden_size="):
        build_objective("hidden_mse", student_num_layers=2, teacher_num_layers=4)
    with pytest.raises(ValueError, match="layer map"):
        build_objective("hidden_mse@map=3-4", 8, 8, 2, 4)


def test_needs():
    ce = build_objective("ce")
    assert not (ce.needs_teacher or ce.needs_hidden_states or ce.needs_attention_relations)
    full = build_objective("ce,rkl,hidden_cos@map=last,attn_rel@layer=-1@teacher_layer=3,attn_rel@layer=0", 8, 16, 2, 4)
    assert full.needs_teacher and full.needs_hidden_states and full.needs_attention_relations
    assert full.student_qkv_layers == (-1, 0)
    assert full.teacher_qkv_layers == (-1, 3)
    assert build_objective("logit_mse").needs_teacher and not build_objective("tvd").needs_hidden_states


# --------------------------------------------------------------------------- logit terms


def logits(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 2


LOGIT_TERMS = [
    ("fkl:0.3@T=2", forward_kl, {"temperature": 2.0}),
    ("rkl:0.3@T=3", reverse_kl, {"temperature": 3.0}),
    ("jsd:0.3@beta=0.2@T=2", generalized_jsd, {"beta": 0.2, "temperature": 2.0}),
    ("skl:0.3@skew=0.4@T=2", skew_forward_kl, {"skew": 0.4, "temperature": 2.0}),
    ("srkl:0.3@skew=0.4@T=0.5", skew_reverse_kl, {"skew": 0.4, "temperature": 0.5}),
    ("tvd:0.3@T=2", total_variation, {"temperature": 2.0}),
    ("logit_mse:0.3@chunk_size=2", logit_mse, {}),
]


@pytest.mark.parametrize("spec,fn,kw", LOGIT_TERMS)
def test_classification_objective_is_the_weighted_sum(spec, fn, kw):
    s, t = logits(6, 2, seed=0), logits(6, 2, seed=1)
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    objective = build_objective("ce:0.7," + spec)
    total, parts = objective(ModelOutputs(s), ModelOutputs(t), labels=labels)
    ce_sum = cross_entropy(s, labels, reduction="sum")
    term_sum = fn(s, t, reduction="sum", **kw)
    assert total.dtype == torch.float32 and total.dim() == 0
    torch.testing.assert_close(total, 0.7 * ce_sum + 0.3 * term_sum)
    name = spec.split(":")[0]
    assert parts == pytest.approx({"ce": ce_sum.item() / 6, name: term_sum.item() / 6}, rel=1e-5)


def test_token_items_are_the_mask_and_ce_skips_minus_100():
    s, t = logits(3, 5, 11, seed=2), logits(3, 5, 11, seed=3)
    labels = torch.randint(0, 11, (3, 5), generator=torch.Generator().manual_seed(4))
    labels[:, 0] = -100  # e.g. prompt tokens
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]).bool()
    total, parts = build_objective("ce,fkl:2@T=2")(ModelOutputs(s), ModelOutputs(t), labels, mask)
    ce_sum = cross_entropy(s, labels, mask & (labels != -100), reduction="sum")
    fkl_sum = forward_kl(s, t, mask, 2.0, reduction="sum")
    torch.testing.assert_close(total, ce_sum + 2 * fkl_sum)
    assert parts == pytest.approx({"ce": ce_sum.item() / 10, "fkl": fkl_sum.item() / 10}, rel=1e-5)


def test_unlabelled_examples_count_for_soft_terms_only():
    s, t = logits(4, 2, seed=25), logits(4, 2, seed=26)
    unlabelled = torch.full((4,), -100)
    total, parts = build_objective("ce,rkl@T=2")(ModelOutputs(s), ModelOutputs(t), labels=unlabelled)
    torch.testing.assert_close(total, reverse_kl(s, t, temperature=2.0, reduction="sum"))
    assert parts["ce"] == 0 and parts["rkl"] > 0


def test_missing_inputs_are_clear_errors():
    s = ModelOutputs(logits(2, 2, seed=5))
    with pytest.raises(ValueError, match="needs teacher"):
        build_objective("ce,rkl")(s, labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        build_objective("ce")(s)
    with pytest.raises(ValueError, match="output_hidden_states=True"):
        build_objective("hidden_mse", 4, 4, 1, 1)(s, s)
    with pytest.raises(ValueError, match="capture_qkv"):
        build_objective("attn_rel@heads=1")(s, s)


# --------------------------------------------------------------------------- feature terms and items


def hidden(num_layers, width, seed, b=3, t=4):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, t, width, generator=g) for _ in range(num_layers + 1))


ATTENTION_MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])


def test_hidden_term_for_classification_is_a_per_example_token_mean():
    student_h, teacher_h = hidden(2, 8, 6), hidden(4, 8, 7)
    student = ModelOutputs(logits(3, 2, seed=8), student_h, ATTENTION_MASK)
    teacher = ModelOutputs(logits(3, 2, seed=9), teacher_h, ATTENTION_MASK)
    total, parts = build_objective("hidden_mse:2@map=last", 8, 8, 2, 4)(student, teacher)
    per_token = hidden_mse(student_h[2], teacher_h[4])
    per_example = [per_token[b, : int(ATTENTION_MASK[b].sum())].mean() for b in range(3)]
    torch.testing.assert_close(total, 2 * sum(per_example))
    assert parts["hidden_mse"] == pytest.approx(sum(per_example).item() / 3, rel=1e-5)
    # Padded tokens do not count.
    for h in student_h:
        h[1, 2:] = 1e3
    torch.testing.assert_close(build_objective("hidden_mse:2@map=last", 8, 8, 2, 4)(student, teacher)[0], total)


def test_hidden_term_for_tokens_sums_over_token_items():
    student_h, teacher_h = hidden(2, 8, 10), hidden(2, 8, 11)
    mask = ATTENTION_MASK.bool()
    student = ModelOutputs(logits(3, 4, 7, seed=12), student_h, ATTENTION_MASK)
    teacher = ModelOutputs(logits(3, 4, 7, seed=13), teacher_h, ATTENTION_MASK)
    total, _ = build_objective("hidden_cos@map=2-2", 8, 8, 2, 2)(student, teacher, mask=mask)
    expected = (1 - torch.cosine_similarity(student_h[2], teacher_h[2], dim=-1))[mask].sum()
    torch.testing.assert_close(total, expected)


def test_attention_term_reads_the_configured_layers():
    g = torch.Generator().manual_seed(22)

    def qkv(width):
        return tuple(torch.randn(3, 4, width, generator=g) for _ in range(3))

    student_qkv, teacher_qkv = {-1: qkv(8), 0: qkv(8)}, {-1: qkv(12), 2: qkv(12)}
    student = ModelOutputs(logits(3, 2, seed=23), attention_mask=ATTENTION_MASK, qkv=student_qkv)
    teacher = ModelOutputs(logits(3, 2, seed=24), attention_mask=ATTENTION_MASK, qkv=teacher_qkv)
    total, parts = build_objective("attn_rel:0.5@layer=0@teacher_layer=2@heads=2")(student, teacher)
    per_token = attention_relation_kl(student_qkv[0], teacher_qkv[2], 2, ATTENTION_MASK)
    per_example = [per_token[b, : int(ATTENTION_MASK[b].sum())].mean() for b in range(3)]
    torch.testing.assert_close(total, 0.5 * sum(per_example))
    assert parts["attn_rel"] == pytest.approx(sum(per_example).item() / 3, rel=1e-5)


def test_duplicate_term_names_get_distinct_parts():
    student = ModelOutputs(logits(3, 2, seed=14), hidden(2, 8, 15), ATTENTION_MASK)
    teacher = ModelOutputs(logits(3, 2, seed=16), hidden(4, 8, 17), ATTENTION_MASK)
    _, parts = build_objective("hidden_mse@map=last,hidden_mse@map=uniform", 8, 8, 2, 4)(student, teacher)
    assert set(parts) == {"hidden_mse_0", "hidden_mse_1"}
    assert parts["hidden_mse_0"] != parts["hidden_mse_1"]


def test_projections_are_parameters_and_round_trip_through_state_dict():
    spec = "hidden_mse@map=uniform,hidden_cos@map=last"
    objective = build_objective(spec, 8, 12, 2, 4)
    assert len(list(objective.parameters())) == 2 * 2 + 2  # weight and bias per projection: 2 + 1 layers
    student = ModelOutputs(logits(3, 2, seed=18), hidden(2, 8, 19), ATTENTION_MASK)
    teacher = ModelOutputs(logits(3, 2, seed=20), hidden(4, 12, 21), ATTENTION_MASK)
    total, _ = objective(student, teacher)
    total.backward()
    assert all(p.grad is not None for p in objective.parameters())

    reloaded = build_objective(spec, 8, 12, 2, 4)
    assert not torch.allclose(reloaded(student, teacher)[0], total)
    reloaded.load_state_dict(objective.state_dict())
    torch.testing.assert_close(reloaded(student, teacher)[0], total)
    assert build_objective("hidden_mse@map=uniform", 8, 8, 2, 4).state_dict() == {}


# --------------------------------------------------------------------------- end to end with tiny BERTs


def tiny_bert(hidden_size, layers, heads, seed):
    torch.manual_seed(seed)
    config = BertConfig(hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=2 * hidden_size, vocab_size=50, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config)


def test_accumulated_micro_batches_match_one_batch_end_to_end():
    """Unequal micro-batches (3, 1, 4 examples, unequal lengths), divided by the step's item count."""
    student, teacher = tiny_bert(16, 2, 2, seed=0), tiny_bert(24, 4, 4, seed=1).eval()
    objective = build_objective("ce:0.5,fkl:0.5@T=2,hidden_mse@map=uniform,hidden_cos:0.5@map=last,attn_rel@heads=2",
                                16, 24, 2, 4)
    ids = torch.randint(1, 50, (8, 6), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(8, 6, dtype=torch.long)
    for b, length in enumerate([6, 3, 5, 2, 6, 4, 1, 5]):
        mask[b, length:] = 0
    labels = torch.randint(0, 2, (8,), generator=torch.Generator().manual_seed(3))
    params = list(student.parameters()) + list(objective.parameters())

    def loss(idx, n_items):
        batch = dict(input_ids=ids[idx], attention_mask=mask[idx], output_hidden_states=True)
        with torch.no_grad(), capture_qkv(teacher, objective.teacher_qkv_layers) as teacher_qkv:
            t = teacher(**batch)
        with capture_qkv(student, objective.student_qkv_layers) as student_qkv:
            s = student(**batch)
        total, parts = objective(ModelOutputs(s.logits, s.hidden_states, mask[idx], student_qkv),
                                 ModelOutputs(t.logits, t.hidden_states, mask[idx], teacher_qkv), labels[idx])
        assert all(v > 0 for v in parts.values()) and len(parts) == 5
        return total / n_items

    full = torch.autograd.grad(loss(slice(0, 8), 8), params)
    micro = [torch.autograd.grad(loss(idx, 8), params) for idx in (slice(0, 3), slice(3, 4), slice(4, 8))]
    for a, b in zip((sum(g) for g in zip(*micro)), full):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert all(torch.isfinite(g).all() for g in full)


def test_per_position_values_sum_to_the_objective_for_logit_terms_only():
    objective = build_objective("fkl:0.3@T=2,rkl:0.7")
    generator = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 4, 11, generator=generator), torch.randn(2, 4, 11, generator=generator)
    mask = torch.tensor([[True, True, False, True], [False, True, True, True]])
    values = objective.per_position(ModelOutputs(s), ModelOutputs(t), mask)
    total, _ = objective(ModelOutputs(s), ModelOutputs(t), mask=mask)
    assert values.shape == mask.shape and (values[~mask] == 0).all()
    torch.testing.assert_close(values.sum(), total)
    expected = 0.3 * forward_kl(s, t, mask, 2.0, reduction="none") + 0.7 * reverse_kl(s, t, mask, reduction="none")
    torch.testing.assert_close(values, expected)
    with pytest.raises(ValueError, match="soft logit terms only"):
        build_objective("ce:0.5,fkl:0.5").per_position(ModelOutputs(s), ModelOutputs(t), mask)


# --------------------------------------------------------------------------- no host synchronisation


@pytest.fixture
def no_host_sync(monkeypatch):
    """Make every tensor -> Python conversion raise: on a GPU each one waits for the queued work."""

    def refuse(*args, **kwargs):
        raise AssertionError("host synchronisation: a tensor was read back to Python")

    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)


def test_objective_forward_reads_nothing_back_to_the_host(no_host_sync):
    g = torch.Generator().manual_seed(30)
    qkv = {-1: tuple(torch.randn(3, 4, 8, generator=g) for _ in range(3))}
    student = ModelOutputs(logits(3, 2, seed=31).requires_grad_(), hidden(2, 8, 32), ATTENTION_MASK, qkv)
    teacher = ModelOutputs(logits(3, 2, seed=33), hidden(4, 8, 34), ATTENTION_MASK, qkv)
    objective = build_objective("ce,fkl@T=2,jsd,hidden_mse@map=uniform,attn_rel@heads=2", 8, 8, 2, 4)
    total, parts = objective(student, teacher, labels=torch.tensor([0, 1, -100]))
    total.backward()
    assert total.dim() == 0 and all(torch.is_tensor(v) and v.dim() == 0 for v in parts.values())


# --------------------------------------------------------------------------- which items count


def test_classification_feature_terms_count_only_the_masked_examples():
    """``mask = labels != -100`` leaves an example out of hidden-state and attention terms too."""
    g = torch.Generator().manual_seed(40)
    student_h, teacher_h = hidden(2, 8, 41), hidden(4, 8, 42)
    s_qkv, t_qkv = ({-1: tuple(torch.randn(3, 4, 8, generator=g) for _ in range(3))} for _ in range(2))
    student = ModelOutputs(logits(3, 2, seed=43), student_h, ATTENTION_MASK, s_qkv)
    teacher = ModelOutputs(logits(3, 2, seed=44), teacher_h, ATTENTION_MASK, t_qkv)
    labels = torch.tensor([0, -100, 1])
    keep = labels != -100
    for spec in ("hidden_mse@map=last", "attn_rel@heads=2"):
        total, parts = build_objective(spec, 8, 8, 2, 4)(student, teacher, labels=labels, mask=keep)
        kept = [ModelOutputs(o.logits[keep], tuple(h[keep] for h in o.hidden_states), o.attention_mask[keep],
                             {k: tuple(x[keep] for x in v) for k, v in o.qkv.items()}) for o in (student, teacher)]
        want, _ = build_objective(spec, 8, 8, 2, 4)(*kept, labels=labels[keep])
        torch.testing.assert_close(total, want)
        torch.testing.assert_close(parts[spec.split("@")[0]], want / 2)


def test_token_terms_mask_with_the_items_mask_not_the_attention_mask():
    """A generative student's prompt tokens are real tokens (attention mask 1) but not items."""
    s, t = logits(2, 4, 7, seed=50), logits(2, 4, 7, seed=51)
    attention = torch.ones(2, 4, dtype=torch.long)
    items = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]]).bool()  # the first tokens are the prompt
    for spec in ("fkl@T=2", "hidden_mse@map=2-2"):
        h_s, h_t = hidden(2, 8, 52, b=2), hidden(2, 8, 53, b=2)
        objective = build_objective(spec, 8, 8, 2, 2)
        total, _ = objective(ModelOutputs(s, h_s, attention), ModelOutputs(t, h_t, attention), mask=items)
        # Changing the prompt positions changes nothing.
        h_s2 = tuple(h.masked_fill(~items[..., None], 5.0) for h in h_s)
        s2 = s.masked_fill(~items[..., None], 9.0)
        moved, _ = objective(ModelOutputs(s2, h_s2, attention), ModelOutputs(t, h_t, attention), mask=items)
        torch.testing.assert_close(moved, total)
        everything, _ = objective(ModelOutputs(s, h_s, attention), ModelOutputs(t, h_t, attention))
        assert not torch.allclose(everything, total)
