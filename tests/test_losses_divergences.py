"""The divergences pinned against closed forms, float64 references and their properties.

Each soft-label divergence is checked on two-class distributions (closed form,
T = 1), on random logits at several temperatures (T² · D(softmax(z_t / T),
softmax(z_s / T)) in float64), for its reduction (sum over V, mean or sum over
the positions that count), and for the conventions in docs/losses.md.
"""
import math

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Categorical, kl_divergence

from losses.divergences import (
    count_positions,
    cross_entropy,
    forward_kl,
    generalized_jsd,
    logit_mse,
    position_mask,
    reverse_kl,
    skew_forward_kl,
    skew_reverse_kl,
    total_variation,
)

# --------------------------------------------------------------------------- float64 references


def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ a log(a / b) over the last axis, from probabilities, 0 log 0 = 0."""
    return torch.where(a > 0, a * (a / b).log(), torch.zeros_like(a)).sum(-1)


def mix(a, b, w):
    return w * a + (1 - w) * b


# name → (function, its parameters, reference D(p, q) from teacher p and student q probabilities)
SOFT = {
    "fkl": (forward_kl, {}, lambda p, q: kl(p, q)),
    "rkl": (reverse_kl, {}, lambda p, q: kl(q, p)),
    "jsd": (generalized_jsd, {"beta": 0.1}, lambda p, q: 0.1 * kl(p, mix(p, q, 0.1)) + 0.9 * kl(q, mix(p, q, 0.1))),
    "skl": (skew_forward_kl, {"skew": 0.3}, lambda p, q: kl(p, mix(p, q, 0.3))),
    "srkl": (skew_reverse_kl, {"skew": 0.3}, lambda p, q: kl(q, mix(p, q, 0.7))),
    "tvd": (total_variation, {}, lambda p, q: 0.5 * (p - q).abs().sum(-1)),
}
ALL_SOFT = [(fn, kw) for fn, kw, _ in SOFT.values()] + [
    (generalized_jsd, {"beta": 0.5}),
    (generalized_jsd, {"beta": 0.0}),
    (generalized_jsd, {"beta": 1.0}),
]


def reference(name, student_logits, teacher_logits, mask=None, temperature=1.0):
    """T² · mean over counted positions of the float64 reference."""
    _, _, ref = SOFT[name]
    p = torch.softmax(teacher_logits.double() / temperature, -1)
    q = torch.softmax(student_logits.double() / temperature, -1)
    values = ref(p, q) * temperature**2
    return values.mean() if mask is None else values[mask].mean()


def random_logits(*shape, scale=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


def two_class_logits(probs):
    """Logits (N, 2) whose softmax is (π, 1 − π) for each π in ``probs``."""
    probs = torch.tensor(probs, dtype=torch.float64)
    return torch.stack([probs.log(), (1 - probs).log()], -1).float()


# --------------------------------------------------------------------------- closed forms


def kl2(a, b):
    """KL((a, 1 − a) ‖ (b, 1 − b))."""
    return a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b))


CLOSED_FORMS = {
    "fkl": lambda p, q: kl2(p, q),
    "rkl": lambda p, q: kl2(q, p),
    "jsd": lambda p, q: 0.1 * kl2(p, 0.1 * p + 0.9 * q) + 0.9 * kl2(q, 0.1 * p + 0.9 * q),
    "skl": lambda p, q: kl2(p, 0.3 * p + 0.7 * q),
    "srkl": lambda p, q: kl2(q, 0.7 * p + 0.3 * q),
    "tvd": lambda p, q: abs(p - q),
}
TEACHER_P = [0.9, 0.3, 0.5, 0.6]
STUDENT_Q = [0.6, 0.8, 0.5, 0.05]
MASK = torch.tensor([True, True, False, True])


@pytest.mark.parametrize("name", SOFT)
def test_two_class_closed_form(name):
    fn, kw, _ = SOFT[name]
    values = [CLOSED_FORMS[name](p, q) for p, q in zip(TEACHER_P, STUDENT_Q)]
    counted = [v for v, m in zip(values, MASK) if m]
    s, t = two_class_logits(STUDENT_Q), two_class_logits(TEACHER_P)

    assert fn(s, t, MASK, **kw).item() == pytest.approx(sum(counted) / len(counted), rel=1e-5)
    assert fn(s, t, MASK, reduction="sum", **kw).item() == pytest.approx(sum(counted), rel=1e-5)
    assert fn(s, t, **kw).item() == pytest.approx(sum(values) / len(values), rel=1e-5)


def test_forward_and_reverse_differ_on_asymmetric_inputs():
    s, t = two_class_logits([0.6]), two_class_logits([0.9])
    assert forward_kl(s, t).item() == pytest.approx(kl2(0.9, 0.6), rel=1e-5)
    assert reverse_kl(s, t).item() == pytest.approx(kl2(0.6, 0.9), rel=1e-5)
    assert abs(forward_kl(s, t).item() - reverse_kl(s, t).item()) > 0.05


# --------------------------------------------------------------------------- temperature, references


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("name", SOFT)
def test_matches_reference_at_temperature(name, temperature):
    fn, kw, _ = SOFT[name]
    s, t = random_logits(3, 4, 7, seed=1), random_logits(3, 4, 7, seed=2)
    mask = random_logits(3, 4, seed=3) > -0.5
    expected = reference(name, s, t, mask, temperature)
    assert fn(s, t, mask, temperature, **kw).item() == pytest.approx(expected.item(), rel=1e-4)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_kl_agrees_with_torch_distributions(temperature):
    s, t = random_logits(5, 6, 11, seed=4), random_logits(5, 6, 11, seed=5)
    mask = random_logits(5, 6, seed=6) > 0
    student, teacher = Categorical(logits=s / temperature), Categorical(logits=t / temperature)
    t2 = temperature**2
    expected_forward = (kl_divergence(teacher, student) * t2)[mask].mean()
    expected_reverse = (kl_divergence(student, teacher) * t2)[mask].mean()
    torch.testing.assert_close(forward_kl(s, t, mask, temperature), expected_forward)
    torch.testing.assert_close(reverse_kl(s, t, mask, temperature), expected_reverse)


def test_logit_mse_closed_form():
    s = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [5.0, 5.0, 5.0]])
    t = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([True, True, False])
    # Σ_v (z_s − z_t)² per position: 8 and 3; mean over the 2 counted positions.
    assert logit_mse(s, t, mask).item() == pytest.approx(5.5)
    assert logit_mse(s, t, mask, reduction="sum").item() == pytest.approx(11.0)
    with pytest.raises(ValueError, match="temperature"):
        logit_mse(s, t, mask, temperature=2.0)


def test_cross_entropy_matches_torch_and_ignores_minus_100():
    s = random_logits(4, 5, 9, seed=7)
    labels = torch.randint(0, 9, (4, 5), generator=torch.Generator().manual_seed(8))
    labels[0, :3] = -100
    mask = random_logits(4, 5, seed=9) > -1
    counted = mask & (labels != -100)
    expected = F.cross_entropy(s[counted], labels[counted], reduction="sum")
    torch.testing.assert_close(cross_entropy(s, labels, mask, reduction="sum"), expected)
    torch.testing.assert_close(cross_entropy(s, labels, mask), expected / counted.sum())
    torch.testing.assert_close(cross_entropy(s, labels), F.cross_entropy(s.reshape(-1, 9), labels.reshape(-1)))
    assert count_positions(s, mask, labels) == counted.sum()


def test_cross_entropy_two_class_closed_form():
    s = two_class_logits([0.8, 0.25])
    labels = torch.tensor([0, 1])
    assert cross_entropy(s, labels).item() == pytest.approx(-(math.log(0.8) + math.log(0.75)) / 2, rel=1e-6)


def test_position_mask_and_count():
    logits = torch.zeros(2, 3, 4)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    labels = torch.tensor([[-100, 1, 2], [3, 0, -100]])
    assert torch.equal(position_mask(logits, mask, labels), torch.tensor([[False, True, False], [True, False, False]]))
    assert count_positions(logits) == 6
    assert count_positions(logits, mask) == 3
    with pytest.raises(ValueError, match="shape"):
        position_mask(logits, mask[:, :2])


# --------------------------------------------------------------------------- JSD and skew conventions


def test_jsd_end_points_are_forward_and_reverse_kl():
    s, t = random_logits(4, 6, seed=10), random_logits(4, 6, seed=11)
    assert forward_kl(s, t).item() != pytest.approx(reverse_kl(s, t).item(), rel=1e-2)
    torch.testing.assert_close(generalized_jsd(s, t, beta=0.0, temperature=2.0), forward_kl(s, t, temperature=2.0))
    torch.testing.assert_close(generalized_jsd(s, t, beta=1.0, temperature=2.0), reverse_kl(s, t, temperature=2.0))


def test_skew_zero_is_plain_kl_and_skew_one_is_zero():
    s, t = random_logits(4, 6, seed=12), random_logits(4, 6, seed=13)
    torch.testing.assert_close(skew_forward_kl(s, t, skew=0.0), forward_kl(s, t))
    torch.testing.assert_close(skew_reverse_kl(s, t, skew=0.0), reverse_kl(s, t))
    assert skew_forward_kl(s, t, skew=1.0).item() == 0.0
    assert skew_reverse_kl(s, t, skew=1.0).item() == 0.0


def test_jsd_log_mixture_does_not_underflow():
    # p_v = e^-100 is a float32 subnormal; β · p_v underflows to 0 and q_v = 0,
    # so log(β p + (1 − β) q) formed from probabilities is −inf and KL(p‖m) = inf.
    s = torch.tensor([[0.0, float("-inf"), 1.0]], requires_grad=True)
    t = torch.tensor([[0.0, -100.0, 0.0]])
    loss = generalized_jsd(s, t, beta=0.01)
    p = torch.softmax(t.double(), -1)
    q = torch.softmax(s.detach().double(), -1)
    m = 0.01 * p + 0.99 * q
    expected = 0.01 * kl(p, m) + 0.99 * kl(q, m)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-3)
    (grad,) = torch.autograd.grad(loss, s)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("loss", [generalized_jsd, skew_forward_kl, skew_reverse_kl])
def test_mixture_weights_out_of_range_are_rejected(loss, beta):
    s, t = random_logits(2, 3), random_logits(2, 3, seed=1)
    key = "beta" if loss is generalized_jsd else "skew"
    loss(s, t, **{key: beta})
    with pytest.raises(ValueError, match=f"{key} must be in"):  # named as the caller named it
        loss(s, t, **{key: beta + 1.5})


# --------------------------------------------------------------------------- properties (hypothesis)

logit_pairs = st.integers(2, 6).flatmap(
    lambda v: st.tuples(
        hnp.arrays(np.float64, (3, v), elements=st.floats(-10, 10)),
        hnp.arrays(np.float64, (3, v), elements=st.floats(-10, 10)),
    )
)


def as_tensors(pair):
    return tuple(torch.tensor(a, dtype=torch.float32) for a in pair)


@settings(max_examples=40, deadline=None)
@given(pair=logit_pairs, temperature=st.sampled_from([0.5, 1.0, 2.0]))
def test_divergences_are_nonnegative_and_zero_on_equal_inputs(pair, temperature):
    s, t = as_tensors(pair)
    for fn, kw in ALL_SOFT:
        assert fn(s, t, temperature=temperature, **kw).item() >= -1e-6
        assert fn(t, t, temperature=temperature, **kw).item() == pytest.approx(0.0, abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(pair=logit_pairs)
def test_divergences_are_positive_when_distributions_differ(pair):
    s, t = as_tensors(pair)
    tvd = total_variation(s, t, reduction="sum").item()
    if tvd < 0.05:
        return
    for fn, kw in ALL_SOFT:
        assert fn(s, t, reduction="sum", **kw).item() > 1e-5


@settings(max_examples=40, deadline=None)
@given(pair=logit_pairs, beta=st.floats(0.01, 0.99) | st.sampled_from([0.0, 1.0]))
def test_jsd_swaps_sides_with_beta(pair, beta):
    s, t = as_tensors(pair)
    # JSD_β(p, q) = JSD_{1−β}(q, p), the end points included; at β = 0.5 it is
    # symmetric and at most log 2. (JSD_β → 0 as β → 0 while JSD_0 is the KL by
    # convention, so β within rounding of 0 or 1 is left out.)
    torch.testing.assert_close(generalized_jsd(s, t, beta=beta), generalized_jsd(t, s, beta=1 - beta),
                               atol=1e-5, rtol=1e-4)
    assert generalized_jsd(s, t, beta=0.5).item() <= math.log(2) + 1e-6


@settings(max_examples=40, deadline=None)
@given(pair=logit_pairs, temperature=st.sampled_from([0.5, 1.0, 3.0]))
def test_jsd_end_points_property(pair, temperature):
    s, t = as_tensors(pair)
    assert generalized_jsd(s, t, temperature=temperature, beta=0.0) == forward_kl(s, t, temperature=temperature)
    assert generalized_jsd(s, t, temperature=temperature, beta=1.0) == reverse_kl(s, t, temperature=temperature)


@settings(max_examples=40, deadline=None)
@given(pair=logit_pairs, temperature=st.sampled_from([0.5, 1.0, 2.0]))
def test_all_match_reference_property(pair, temperature):
    s, t = as_tensors(pair)
    for name, (fn, kw, _) in SOFT.items():
        expected = reference(name, s, t, temperature=temperature).item()
        assert fn(s, t, temperature=temperature, **kw).item() == pytest.approx(expected, rel=1e-3, abs=1e-5), name


# --------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("fn,kw", ALL_SOFT)
def test_shared_minus_inf_entries_are_ignored(fn, kw):
    """Entries −inf in both (padding vocabulary): the same value as without them, finite gradients."""
    s, t = random_logits(3, 6, seed=14), random_logits(3, 6, seed=15)
    s_inf, t_inf = s.clone(), t.clone()
    s_inf[:, [1, 4]] = float("-inf")
    t_inf[:, [1, 4]] = float("-inf")
    s_inf.requires_grad_()
    loss = fn(s_inf, t_inf, temperature=2.0, **kw)
    keep = [0, 2, 3, 5]
    torch.testing.assert_close(loss, fn(s[:, keep], t[:, keep], temperature=2.0, **kw))
    (grad,) = torch.autograd.grad(loss, s_inf)
    assert torch.isfinite(grad).all()


def test_one_sided_minus_inf():
    """Only the teacher is −inf (top-k teacher): finite except where the math says inf."""
    s = random_logits(3, 6, seed=16).requires_grad_()
    t = random_logits(3, 6, seed=17)
    t[:, :3] = float("-inf")
    finite = [forward_kl, total_variation, generalized_jsd, skew_forward_kl, skew_reverse_kl]
    for fn in finite:
        loss = fn(s, t, temperature=2.0)
        (grad,) = torch.autograd.grad(loss, s)
        assert torch.isfinite(loss) and torch.isfinite(grad).all(), fn.__name__
    # KL(q‖p) with p_v = 0 < q_v is infinite; so is KL(p‖q) the other way around.
    assert reverse_kl(s, t).item() == math.inf
    assert forward_kl(t, s.detach()).item() == math.inf
    assert torch.isfinite(reverse_kl(t, s.detach()))


@pytest.mark.parametrize("fn,kw", ALL_SOFT + [(logit_mse, {})])
def test_confident_distributions_give_finite_gradients(fn, kw):
    s = random_logits(4, 8, seed=18)
    t = random_logits(4, 8, seed=19) * 1e4  # one-hot teacher, the rest underflows
    for student, teacher in ((s, t), (s * 1e4, t), (s * 1e4, s * 1e4)):
        student = student.clone().requires_grad_()
        loss = fn(student, teacher, **kw)
        (grad,) = torch.autograd.grad(loss, student)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()


@pytest.mark.parametrize("fn,kw", ALL_SOFT + [(logit_mse, {})])
def test_bf16_inputs_give_float32_losses(fn, kw):
    s = random_logits(2, 3, 10, seed=20).bfloat16().requires_grad_()
    t = random_logits(2, 3, 10, seed=21).bfloat16()
    loss = fn(s, t, **kw)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, fn(s.detach().float(), t.float(), **kw))
    (grad,) = torch.autograd.grad(loss, s)
    assert grad.dtype == torch.bfloat16


def test_cross_entropy_bf16_and_minus_inf():
    s = random_logits(3, 8, seed=22)
    s[:, 5:] = float("-inf")
    s = s.bfloat16().requires_grad_()
    labels = torch.tensor([0, 4, 2])
    loss = cross_entropy(s, labels)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, F.cross_entropy(s.detach().float()[:, :5], labels))
    (grad,) = torch.autograd.grad(loss, s)
    assert torch.isfinite(grad.float()).all()


@pytest.mark.parametrize("fn,kw", ALL_SOFT + [(logit_mse, {})])
def test_positions_outside_the_mask_cannot_poison_gradients(fn, kw):
    s = random_logits(2, 4, 5, seed=23)
    t = random_logits(2, 4, 5, seed=24)
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[1, 2:] = False
    s[1, 2] = float("nan")
    t[1, 3] = float("-inf")
    s.requires_grad_()
    loss = fn(s, t, mask, **kw)
    (grad,) = torch.autograd.grad(loss, s)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert (grad[1, 2:] == 0).all()
    torch.testing.assert_close(loss, fn(s.detach()[mask], t[mask], **kw))


# --------------------------------------------------------------------------- chunking and accumulation


@pytest.mark.parametrize("chunk_size", [1, 4, 7])  # 15 positions: no tail, a tail of 3, a tail of 1
@pytest.mark.parametrize("fn,kw", ALL_SOFT + [(logit_mse, {})])
def test_chunked_equals_plain(fn, kw, chunk_size):
    s = random_logits(3, 5, 13, seed=25).requires_grad_()
    t = random_logits(3, 5, 13, seed=26)
    mask = random_logits(3, 5, seed=27) > -0.7
    mask[-1, -1] = True  # the last, partial chunk counts
    temperature = {} if fn is logit_mse else {"temperature": 2.0}
    plain = fn(s, t, mask, **temperature, **kw)
    chunked = fn(s, t, mask, **temperature, chunk_size=chunk_size, **kw)
    torch.testing.assert_close(chunked, plain)
    torch.testing.assert_close(torch.autograd.grad(chunked, s)[0], torch.autograd.grad(plain, s)[0])


@pytest.mark.parametrize("chunk_size", [None, 4])
@pytest.mark.parametrize("fn,kw", ALL_SOFT + [(logit_mse, {})])
def test_reduction_none_gives_the_values_that_sum_reduces(fn, kw, chunk_size):
    s = random_logits(3, 5, 13, seed=30).requires_grad_()
    t = random_logits(3, 5, 13, seed=31)
    mask = random_logits(3, 5, seed=32) > -0.7
    temperature = {} if fn is logit_mse else {"temperature": 2.0}
    values = fn(s, t, mask, **temperature, reduction="none", chunk_size=chunk_size, **kw)
    assert values.shape == mask.shape and values.dtype == torch.float32
    assert (values[~mask] == 0).all() and (values[mask] > 0).all()
    total = fn(s, t, mask, **temperature, reduction="sum", **kw)
    torch.testing.assert_close(values.sum(), total)
    torch.testing.assert_close(torch.autograd.grad(values.sum(), s)[0], torch.autograd.grad(total, s)[0])
    # Each value belongs to its own position: a mask of that position alone sums to it.
    b, p = (int(i) for i in mask.nonzero()[-1])
    alone = torch.zeros_like(mask)
    alone[b, p] = True
    torch.testing.assert_close(fn(s, t, alone, **temperature, reduction="sum", **kw), values[b, p])


def test_chunked_cross_entropy_equals_plain():
    s = random_logits(3, 5, 13, seed=28).requires_grad_()
    labels = torch.randint(0, 13, (3, 5), generator=torch.Generator().manual_seed(29))
    labels[0, 1:] = -100
    plain, chunked = cross_entropy(s, labels), cross_entropy(s, labels, chunk_size=4)  # 15 = 4 + 4 + 4 + 3
    torch.testing.assert_close(chunked, plain)
    torch.testing.assert_close(torch.autograd.grad(chunked, s)[0], torch.autograd.grad(plain, s)[0])


def test_chunked_keeps_no_vocabulary_sized_intermediates_for_backward():
    """Plain saves (N, V) float32 tensors for the backward pass; chunked saves only views of its inputs."""
    s = random_logits(64, 1000).requires_grad_()
    t = random_logits(64, 1000, seed=1)
    inputs = {s.untyped_storage().data_ptr(), t.untyped_storage().data_ptr()}

    def saved_bytes(**kw):
        saved = []

        def pack(x):
            if x.untyped_storage().data_ptr() not in inputs:
                saved.append(x.numel() * x.element_size())
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            reverse_kl(s, t, temperature=2.0, **kw)
        return sum(saved)

    assert saved_bytes() >= 64 * 1000 * 4
    assert saved_bytes(chunk_size=8) < 64 * 1000


@pytest.mark.parametrize("fn", [forward_kl, reverse_kl])
def test_accumulation_with_unequal_valid_counts_matches_one_batch(fn):
    """Σ over micro-batches of (micro-batch sum / step count) = the full batch's mean."""
    torch.manual_seed(30)
    model = torch.nn.Sequential(torch.nn.Embedding(20, 8), torch.nn.Linear(8, 11))
    tokens = torch.randint(0, 20, (8, 6))
    teacher = torch.randn(8, 6, 11)
    labels = torch.randint(0, 11, (8, 6))
    # micro-batches of 2 examples with 12, 5, 3 and 10 valid tokens
    valid = torch.ones(8, 6, dtype=torch.bool)
    valid[2:4, 3:] = False
    valid[3, 2] = False
    valid[4:6, 1:] = False
    valid[4, 1] = True
    valid[6:8, 5:] = False
    labels[~valid] = -100

    def step_loss(idx, n_step):
        logits = model(tokens[idx])
        mask = valid[idx]
        total = fn(logits, teacher[idx], mask, 2.0, reduction="sum") + cross_entropy(logits, labels[idx], reduction="sum")
        return total / n_step

    n_step = count_positions(teacher, valid)
    full = torch.autograd.grad(step_loss(slice(None), n_step), list(model.parameters()))
    micro = [torch.autograd.grad(step_loss(slice(i, i + 2), n_step), list(model.parameters())) for i in range(0, 8, 2)]
    accumulated = [sum(g) for g in zip(*micro)]
    for a, b in zip(accumulated, full):
        torch.testing.assert_close(a, b)
    # Per-micro-batch means weight the tokens unequally: a different gradient.
    naive = [torch.autograd.grad(step_loss(slice(i, i + 2), count_positions(teacher[i:i + 2], valid[i:i + 2])) / 4,
                                 list(model.parameters())) for i in range(0, 8, 2)]
    assert not torch.allclose(sum(g[1] for g in naive), full[1], atol=1e-4)


def test_errors_are_clear():
    s, t = random_logits(2, 5), random_logits(2, 6)
    with pytest.raises(ValueError, match="vocabulary"):
        forward_kl(s, t)
    with pytest.raises(ValueError, match="temperature"):
        reverse_kl(s, s, temperature=0.0)
    with pytest.raises(ValueError, match="'mean', 'sum' or 'none'"):
        forward_kl(s, s, reduction="batchmean")
    with pytest.raises(ValueError, match="chunk_size"):
        forward_kl(s, s, chunk_size=0)
