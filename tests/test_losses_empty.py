"""Every divergence with nothing to average over: ``reduction="mean"`` gives 0 with finite gradients."""
import pytest
import torch

from losses import (
    cross_entropy,
    forward_kl,
    generalized_jsd,
    logit_mse,
    reverse_kl,
    skew_forward_kl,
    skew_reverse_kl,
    total_variation,
)

SOFT = [forward_kl, reverse_kl, generalized_jsd, skew_forward_kl, skew_reverse_kl, total_variation, logit_mse]


@pytest.mark.parametrize("chunk_size", [None, 2])
@pytest.mark.parametrize("fn", SOFT, ids=lambda f: f.__name__)
def test_soft_terms_with_an_all_false_mask_are_zero_with_finite_gradients(fn, chunk_size):
    student = torch.randn(2, 3, 5, requires_grad=True)
    teacher = torch.randn(2, 3, 5)
    loss = fn(student, teacher, torch.zeros(2, 3, dtype=torch.bool), reduction="mean", chunk_size=chunk_size)
    loss.backward()
    assert loss.item() == 0 and torch.isfinite(student.grad).all()


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_cross_entropy_with_every_label_ignored_is_zero_with_finite_gradients(chunk_size):
    student = torch.randn(2, 3, 5, requires_grad=True)
    loss = cross_entropy(student, torch.full((2, 3), -100), reduction="mean", chunk_size=chunk_size)
    loss.backward()
    assert loss.item() == 0 and torch.isfinite(student.grad).all()
