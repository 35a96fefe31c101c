"""The shared loop: accumulation, resume, atomic checkpoints, early stopping."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification

from conftest import make_url_rows, write_csv
from kd.data.batching import TokenizedSet, collate
from kd.train.checkpoint import point_link, write_checkpoint
from kd.train.loss_fns import cross_entropy_sum
from kd.train.config import RunConfig, load_config
from kd.train.loop import TrainConfig, forward_backward, train


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
    # Throughput counts the 6 steps that ran (24 examples), their real tokens, and the process's peak memory.
    t = result.throughput
    assert t["train_examples_seen"] == 24 and 24 * 4 <= t["train_tokens_seen"] <= 24 * data.lengths.max()
    assert t["train_tokens_per_s"] == pytest.approx(t["train_tokens_seen"] / t["train_step_seconds"])
    assert t["peak_memory_mib"] > 10


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


# --------------------------------------------------------------------------- one optimizer step: AMP, clipping, schedule


class Recorder:
    """Wraps ``torch.nn.utils.clip_grad_norm_`` (what the loop calls once per optimizer step)
    to record the parameters it clips and the norm it returns."""

    def __init__(self, monkeypatch):
        self.params, self.norms = [], []
        real = torch.nn.utils.clip_grad_norm_

        def clip(params, max_norm, *args, **kwargs):
            params = list(params)
            self.params.append({id(p) for p in params})
            norm = real(params, max_norm, *args, **kwargs)
            self.norms.append(float(norm))
            return norm

        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)


def run_steps(tmp_path, cfg: TrainConfig, extra_modules=None, loss_fn=cross_entropy_sum, model=None, on_step=None):
    model = model or tiny_model()
    train(model, loss_fn, random_set(32), lambda m: {"roc_auc": 0.0}, cfg, tmp_path, save=lambda m, f: None,
          device=torch.device("cpu"), extra_modules=extra_modules, on_step=on_step)
    return model


def test_fp16_unscales_gradients_before_clipping(tmp_path, monkeypatch):
    """One fp16 step with a GradScaler (scale 65536) clips the same gradient norm as one fp32 step, and steps."""
    recorder = Recorder(monkeypatch)
    cfg = dict(epochs=1, batch_size=16, max_steps=1, lr=1e-2, max_grad_norm=1e-3)
    run_steps(tmp_path / "fp32", TrainConfig(**cfg, precision="fp32"))
    fp16 = run_steps(tmp_path / "fp16", TrainConfig(**cfg, precision="fp16"))
    assert recorder.norms[0] > 1e-3  # the clip is active
    assert recorder.norms[1] == pytest.approx(recorder.norms[0], rel=0.1)  # fp16 rounding, not a factor 65536
    assert not torch.equal(fp16.classifier.weight, tiny_model().classifier.weight)  # the step was not skipped


def test_clipping_covers_the_objectives_trainable_modules(tmp_path, monkeypatch):
    recorder = Recorder(monkeypatch)
    projection = torch.nn.Linear(16, 16)

    def loss_fn(model, batch):  # a hidden-state projection trained alongside the model
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        return cross_entropy_sum(model, batch) + projection(out.hidden_states[-1][:, 0]).pow(2).sum()

    run_steps(tmp_path, TrainConfig(epochs=1, batch_size=16, max_steps=1), {"projection": projection}, loss_fn)
    (clipped,) = recorder.params
    assert {id(p) for p in projection.parameters()} <= clipped


def test_scheduler_steps_once_per_optimizer_step_with_the_documented_rate(tmp_path, monkeypatch):
    import kd.train.loop

    schedulers = []
    real = kd.train.loop.linear_warmup_decay
    monkeypatch.setattr(kd.train.loop, "linear_warmup_decay", lambda *a: schedulers.append(real(*a)) or schedulers[-1])
    lr, rates = 1e-3, {}
    cfg = TrainConfig(epochs=2, batch_size=8, grad_accum=4, lr=lr, warmup_ratio=0.25)  # 32 examples: 4 steps/epoch
    run_steps(tmp_path, cfg, on_step=lambda step: rates.setdefault(step, schedulers[0].get_last_lr()[0]))
    total, warmup = 8, 2

    def documented(s):  # the rate of optimizer step s (0-based)
        return lr * ((s + 1) / (warmup + 1) if s < warmup else (total - s) / (total - warmup))

    # After optimizer step k the scheduler holds the rate of step k.
    assert rates == pytest.approx({k: documented(k) for k in range(1, total + 1)}, rel=1e-6)
    assert rates[total] == 0


def test_resume_trains_with_the_configured_learning_rate(tmp_path, monkeypatch):
    """A resumed run follows train.lr as configured now (a change the resume guard was told
    to allow), on the same schedule; an unchanged lr gives the rates of an uninterrupted run."""
    import kd.train.loop

    schedulers = []
    real = kd.train.loop.linear_warmup_decay
    monkeypatch.setattr(kd.train.loop, "linear_warmup_decay", lambda *a: schedulers.append(real(*a)) or schedulers[-1])
    save = lambda m, folder: m.save_pretrained(folder)  # noqa: E731

    def rates_of(out, cfg, resume, model):
        rates = {}
        train(model, cross_entropy_sum, random_set(32), lambda m: {"roc_auc": 0.0}, cfg, out, save=save,
              device=torch.device("cpu"), resume=resume,
              on_step=lambda step: rates.setdefault(step, schedulers[-1].optimizer.param_groups[0]["lr"]))
        return rates

    base = dict(epochs=1, batch_size=8, warmup_ratio=0.0, eval_every=2)  # 4 steps, a checkpoint every 2
    whole = rates_of(tmp_path / "whole", TrainConfig(**base, lr=1e-3), False, tiny_model())
    rates_of(tmp_path / "cut", TrainConfig(**base, lr=1e-3, max_steps=2), False, tiny_model())
    same = rates_of(tmp_path / "cut", TrainConfig(**base, lr=1e-3), True, tiny_model())
    assert same == pytest.approx({k: whole[k] for k in (3, 4)}, rel=1e-6)
    rates_of(tmp_path / "cut2", TrainConfig(**base, lr=1e-3, max_steps=2), False, tiny_model())
    doubled = rates_of(tmp_path / "cut2", TrainConfig(**base, lr=2e-3), True, tiny_model())
    assert doubled == pytest.approx({k: 2 * whole[k] for k in (3, 4)}, rel=1e-6)


class QueuedDeviceClock:
    """A fake clock and device: each micro-batch takes the host 0.5 s to queue and the device 1 s
    to run; queued work runs when the device is synchronised (or when evaluation reads results),
    as CUDA kernels do."""

    def __init__(self):
        self.now, self.queued, self.micro_batches = 0.0, 0.0, 0

    def perf_counter(self) -> float:
        return self.now

    def synchronize(self, device) -> None:
        self.now, self.queued = self.now + self.queued, 0.0

    def queue(self) -> None:
        self.micro_batches += 1
        self.now += 0.5
        self.queued += 1.0


def test_throughput_waits_for_the_device_before_reading_the_clock(tmp_path, monkeypatch):
    """Step time is charged to the steps, not to the evaluation that would otherwise run their queued kernels."""
    import types

    import kd.train.loop

    clock = QueuedDeviceClock()
    monkeypatch.setattr(kd.train.loop, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    monkeypatch.setattr(kd.train.loop, "synchronize", clock.synchronize)

    def loss_fn(model, batch):
        clock.queue()
        return cross_entropy_sum(model, batch)

    def evaluate(model):  # reading scores waits for the queued work, then takes 100 s itself
        clock.synchronize(None)
        clock.now += 100.0
        return {"roc_auc": 0.5}

    cfg = TrainConfig(epochs=2, batch_size=8, grad_accum=2, eval_every=3, log_every=2, precision="fp32")
    result = train(tiny_model(), loss_fn, random_set(32), evaluate, cfg, tmp_path, save=lambda m, f: None,
                   device=torch.device("cpu"))
    assert clock.micro_batches == 16  # 8 steps of 2, evaluated at steps 3, 4 (epoch end), 6 and 8
    assert result.throughput["train_step_seconds"] == 16 * (0.5 + 1.0)
    assert result.throughput["train_samples_per_s"] == 64 / 24
