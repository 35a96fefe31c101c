"""The shared loop: accumulation, resume, atomic checkpoints, early stopping."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification

from conftest import make_url_rows, write_csv
from kd.batching import TokenizedSet, collate
from kd.checkpoint import point_link, write_checkpoint
from kd.classifier import cross_entropy_sum
from kd.config import RunConfig, load_config
from kd.loop import TrainConfig, forward_backward, train


def tiny_model(seed=0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2)
    return BertForSequenceClassification(config)


def random_set(n=16, seed=0):
    rng = np.random.default_rng(seed)
    ids = [[1, *rng.integers(3, 64, size=rng.integers(2, 30)).tolist(), 2] for _ in range(n)]
    return TokenizedSet(ids, rng.integers(0, 2, size=n), pad_token_id=0)


def grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("sizes", [(4, 4, 4, 4), (3, 6, 2, 5)])
def test_accumulated_micro_batches_give_the_full_batch_gradient(sizes):
    data = random_set(16)
    model = tiny_model()
    forward_backward(model, cross_entropy_sum, [collate(data, np.arange(16))])
    full = grads(model)
    model.zero_grad()
    order = np.argsort(data.lengths)  # micro-batches of very different lengths and padding
    bounds = np.cumsum((0, *sizes))
    micro = [collate(data, order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    assert len({m["input_ids"].shape[1] for m in micro}) > 1
    forward_backward(model, cross_entropy_sum, micro)
    torch.testing.assert_close(grads(model), full, rtol=1e-4, atol=1e-6)


def test_per_micro_batch_normalisation_would_differ():
    """Guards the test above: the naive mean of micro-batch means is measurably different."""
    data = random_set(16)
    model = tiny_model()
    forward_backward(model, cross_entropy_sum, [collate(data, np.arange(16))])
    full = grads(model)
    model.zero_grad()
    order = np.argsort(data.lengths)
    for a, b in ((0, 3), (3, 9), (9, 11), (11, 16)):
        forward_backward(model, cross_entropy_sum, [collate(data, order[a:b])])
    assert not torch.allclose(grads(model) / 4, full, rtol=1e-3)


def test_write_checkpoint_is_atomic(tmp_path):
    def good(folder):
        (folder / "weights").write_text("v1")

    first = write_checkpoint(tmp_path, "step-000001", good)
    point_link(tmp_path / "best", first)

    def crash(folder):
        (folder / "weights").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_checkpoint(tmp_path, "step-000001", crash)
    assert (tmp_path / "best" / "weights").read_text() == "v1"
    second = write_checkpoint(tmp_path, "step-000002", lambda f: (f / "weights").write_text("v2"))
    point_link(tmp_path / "best", second)
    assert (tmp_path / "best" / "weights").read_text() == "v2" and (tmp_path / "best").is_symlink()


def test_early_stopping_after_patience(tmp_path):
    data = random_set(64)
    scores = iter([0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    model = tiny_model()
    cfg = TrainConfig(epochs=1, batch_size=4, eval_every=2, patience=2, log_every=1)
    result = train(model, cross_entropy_sum, data, lambda m: {"roc_auc": next(scores)}, cfg, tmp_path,
                   save=lambda m, f: m.save_pretrained(f), device=torch.device("cpu"))
    assert result.stopped_early and result.steps == 6 and result.best_step == 2
    assert (tmp_path / "best").resolve().name == "step-000002"
    assert (tmp_path / "last").resolve().name == "step-000006"


class Interrupt(Exception):
    pass


def teacher_config(tiny_bert_dir, data_csv, out_dir):
    return load_config(RunConfig, None, [
        f"model.name_or_path={tiny_bert_dir}", f"data.sources=[{data_csv}]", "data.split=random",
        "train.epochs=2", "train.batch_size=8", "train.grad_accum=2", "train.eval_every=5", "train.log_every=2",
        "train.lr=1e-3", "train.eval_batch_size=64", f"out_dir={out_dir}",
    ])


def test_resume_ends_with_the_same_weights(tmp_path, tiny_bert_dir):
    import train_teacher

    data_csv = write_csv(tmp_path / "urls.csv", make_url_rows(120))
    train_teacher.run(teacher_config(tiny_bert_dir, data_csv, tmp_path / "straight"))

    def interrupt(step):
        if step == 8:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_teacher.run(teacher_config(tiny_bert_dir, data_csv, tmp_path / "resumed"), on_step=interrupt)
    assert (tmp_path / "resumed" / "last").resolve().name == "step-000005"
    train_teacher.run(teacher_config(tiny_bert_dir, data_csv, tmp_path / "resumed"), resume=True)

    straight = load_file(tmp_path / "straight" / "last" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "last" / "model.safetensors")
    assert (tmp_path / "straight" / "last").resolve().name == (tmp_path / "resumed" / "last").resolve().name
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0)
    first = load_file(tmp_path / "straight" / "checkpoints" / (tmp_path / "straight" / "last").resolve().name / "model.safetensors")
    assert first.keys() == straight.keys()
