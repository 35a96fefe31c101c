"""``train.compile``: a compiled distillation step equals the eager one; the QLoRA recipe refuses it."""
import pytest
import torch

from kd.train.loss_fns import distillation_loss
from kd.train.loop import TrainConfig, train
from losses import build_objective
from test_ddp import bert, url_like_set


def train_two_steps(tmp_path, compile: bool) -> dict[str, torch.Tensor]:
    """Two optimizer steps (2 micro-batches each, different shapes) of a student distilled with an
    attention-relation term from a live teacher; the student's weights after them."""
    student, teacher = bert(16, 2, 0), bert(32, 4, 100)
    objective = build_objective("ce:0.5,attn_rel:1@heads=2", 16, 32, 2, 4)
    cfg = TrainConfig(epochs=1, batch_size=8, grad_accum=2, max_steps=2, log_every=1, lr=1e-2, compile=compile)
    train(student, distillation_loss(objective, teacher=teacher), url_like_set(32, seed=3), lambda m: {"roc_auc": 0.0}, cfg,
          tmp_path, save=lambda m, f: None, device=torch.device("cpu"))
    return {n: p.detach().clone() for n, p in student.named_parameters()}


def test_compiled_distillation_with_attention_relations_matches_eager(tmp_path, aot_eager_compile):
    eager = train_two_steps(tmp_path / "eager", compile=False)
    assert not aot_eager_compile
    got = train_two_steps(tmp_path / "compiled", compile=True)
    assert len(aot_eager_compile) == 1
    for name in eager:
        torch.testing.assert_close(got[name], eager[name], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_qlora_recipe_refuses_compile():
    from kd.train.config import load_config
    from kd.train.generative import QLoRARunConfig

    with pytest.raises(ValueError, match="train.compile does not apply to the QLoRA student"):
        load_config(QLoRARunConfig, None, ["train.compile=true"])
