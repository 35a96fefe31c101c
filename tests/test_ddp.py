"""DDP on CPU: 2 gloo ranks with global batch B make the same update as 1 process with B; only rank 0 writes.

Both ranks run once, in one ``torch.multiprocessing.spawn`` (module fixture),
and write what they computed to files; the tests compare that with the same
step computed here in a single process.
"""
import contextlib
import io
import json
import os
import shutil
import socket
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertForSequenceClassification

from kd.data.batching import TokenizedSet, collate
from kd.train.loss_fns import cross_entropy_sum, distillation_loss
from kd.train.checkpoint import point_link
from kd.train.distributed import DistInfo, init_distributed
from kd.train.loop import TrainConfig, build_optimizer, forward_backward, train
from losses import build_objective

WORLD = 2
DISTILL_SPEC = "fkl@T=2,hidden_mse@map=uniform"
SHARDS = {
    # Rank r's micro-batches of the 12 examples (sorted by length, so each rank pads differently).
    "equal": [[np.arange(0, 6)], [np.arange(6, 12)]],
    # Unequal counts: per-rank means averaged over ranks would differ from the global mean.
    "unequal": [[np.arange(0, 4)], [np.arange(4, 12)]],
    # Two micro-batches per rank (gradient accumulation), of unequal sizes.
    "accum": [[np.arange(0, 2), np.arange(2, 5)], [np.arange(5, 9), np.arange(9, 12)]],
}
CASES = {  # name -> (objective spec or None for plain cross-entropy, shards)
    "ce_equal": (None, "equal"),
    "ce_unequal": (None, "unequal"),
    "distill_unequal": (DISTILL_SPEC, "unequal"),
    "distill_accum": (DISTILL_SPEC, "accum"),
}
TRAIN_CFG = dict(epochs=1, batch_size=8, max_steps=3, eval_every=2, log_every=1, lr=1e-3, precision="fp32")
"""The tiny ``train()``: global batch 8; the 2 ranks run it with 2 micro-batches of 2 each (in fp32:
``auto`` is bf16 on CPUs with native bf16, too coarse for comparing updates at 1e-5)."""


def bert(hidden: int, layers: int, seed: int) -> BertForSequenceClassification:
    """A tiny random BERT classifier without dropout (ranks must compute what one process computes)."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=64, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config)


def url_like_set(n: int, seed: int = 0) -> TokenizedSet:
    """``n`` random token sequences of 3 to 40 tokens, sorted by length."""
    rng = np.random.default_rng(seed)
    ids = sorted(([1, *rng.integers(3, 64, size=rng.integers(1, 39)).tolist(), 2] for _ in range(n)), key=len)
    return TokenizedSet(ids, rng.integers(0, 2, size=n), pad_token_id=0)


def build_case(spec: str | None, seed: int = 0):
    """``(student, loss_fn, extra_modules)``: plain cross-entropy, or distillation from a
    wider, deeper live teacher through an objective with trainable projections (16 -> 32)."""
    student = bert(16, 2, seed)
    if spec is None:
        return student, cross_entropy_sum, {}
    teacher = bert(32, 4, 100)
    torch.manual_seed(seed + 1)
    objective = build_objective(spec, student_hidden_size=16, teacher_hidden_size=32,
                                student_num_layers=2, teacher_num_layers=4)
    assert any(True for _ in objective.parameters()), "the objective should carry trainable projections"
    return student, distillation_loss(objective, teacher=teacher), {"objective": objective}


def named_params(student, extra: dict) -> dict[str, torch.nn.Parameter]:
    named = {f"model.{n}": p for n, p in student.named_parameters()}
    named.update({f"{k}.{n}": p for k, m in extra.items() for n, p in m.named_parameters()})
    return named


def one_step(spec: str | None, micro_batches: list[np.ndarray], dist_info: DistInfo = DistInfo(),
             sync_extra: bool = True) -> dict:
    """One optimizer step of the loop's pieces on ``micro_batches`` (indices of :func:`url_like_set`).

    Returns ``loss``, ``grad.<name>`` (after the step's backward and DDP sync),
    ``weight.<name>`` (after AdamW) and, under DDP, ``sync``: whether DDP was to
    all-reduce in each micro-batch's backward. ``sync_extra=False`` leaves the
    objective's gradients unsynchronised, as the loop did before extra modules were averaged.
    """
    student, loss_fn, extra = build_case(spec)
    model = torch.nn.parallel.DistributedDataParallel(student) if dist_info.enabled else student
    params = named_params(student, extra)
    optimizer = build_optimizer([student, *extra.values()], TrainConfig(lr=1e-3), torch.device("cpu"))
    extra_params = [p for m in extra.values() for p in m.parameters()] if sync_extra else []
    sync = []

    def recording_loss_fn(model, batch):
        sync.append(getattr(model, "require_backward_grad_sync", True))
        return loss_fn(model, batch)

    data = url_like_set(12)
    loss = forward_backward(model, recording_loss_fn, [collate(data, idx) for idx in micro_batches], dist_info=dist_info,
                            extra_params=extra_params)
    out = {"loss": loss.reshape(1)}
    if dist_info.enabled:
        out["sync"] = torch.tensor(sync)
    out.update({f"grad.{n}": p.grad.clone() for n, p in params.items() if p.grad is not None})
    optimizer.step()
    out.update({f"weight.{n}": p.detach().clone() for n, p in params.items()})
    return out


def train_run(out_dir, dist_info: DistInfo = DistInfo(), grad_accum: int = 1, resume: bool = False) -> dict:
    """The 3-step distillation ``train()`` of ``TRAIN_CFG`` from rank-dependent initial weights;
    returns the final weights, how often ``save`` ran, what the rank printed, and per
    ``loss_fn`` call the examples it saw and a draw from the training RNG (as dropout would)."""
    student, loss_fn, extra = build_case(DISTILL_SPEC, seed=10 * dist_info.rank)
    saves, seen, draws = [], [], []

    def save(model, folder):
        saves.append(folder.name)
        model.save_pretrained(folder)

    def recording_loss_fn(model, batch):
        seen.append(batch["index"].tolist())
        draws.append(torch.rand(()).item())
        return loss_fn(model, batch)

    printed = io.StringIO()
    torch.manual_seed(0)  # what every rank's recipe does (set_seed(train.seed))
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        train(student, recording_loss_fn, url_like_set(48, seed=1), lambda m: {"roc_auc": 0.5},
              TrainConfig(**TRAIN_CFG, grad_accum=grad_accum), out_dir,
              save=save, device=torch.device("cpu"), dist_info=dist_info, extra_modules=extra, resume=resume)
    weights = {f"weight.{n}": p.detach().clone() for n, p in named_params(student, extra).items()}
    return {"weights": weights, "saves": saves, "printed": printed.getvalue(), "seen": seen, "draws": draws}


def worker(rank: int, port: int, out_dir: str) -> None:
    """One rank: join the group as ``torchrun`` would describe it, run every case and the tiny ``train()``."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))  # a hang fails within a minute
    try:
        dist_info = init_distributed()
        assert dist_info == DistInfo(rank, WORLD, rank)
        tensors = {}
        for name, (spec, shards) in CASES.items():
            indices = SHARDS[shards][rank]
            tensors.update({f"{name}/{k}": v for k, v in one_step(spec, indices, dist_info).items()})
        unsynced = one_step(DISTILL_SPEC, SHARDS["unequal"][rank], dist_info, sync_extra=False)
        tensors.update({f"unsynced/{k}": v for k, v in unsynced.items()})
        trained = train_run(os.path.join(out_dir, "run"), dist_info, grad_accum=2)
        tensors.update({f"train/{k}": v for k, v in trained["weights"].items()})
        resumed_dir = os.path.join(out_dir, "resumed")  # the same run, resumed from its step-2 checkpoint
        if rank == 0:
            shutil.copytree(os.path.join(out_dir, "run"), resumed_dir, symlinks=True)
            point_link(Path(resumed_dir) / "last", Path(resumed_dir) / "checkpoints" / "step-000002")
        dist.barrier()
        trained["resumed_draws"] = train_run(resumed_dir, dist_info, grad_accum=2, resume=True)["draws"]
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out_dir, f"rank{rank}.safetensors"))
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
            json.dump({k: v for k, v in trained.items() if k != "weights"}, handle)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Spawn the 2 ranks once; ``(tensors per rank, info per rank, run folder)``."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    tensors = [load_file(out / f"rank{r}.safetensors") for r in range(WORLD)]
    info = [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]
    return tensors, info, out / "run"


def assert_same(got: dict, want: dict, keys) -> None:
    for key in keys:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize("case", CASES)
def test_two_ranks_step_like_one_process_with_the_whole_batch(ranks, case):
    tensors, _, _ = ranks
    spec, shards = CASES[case]
    want = one_step(spec, [np.concatenate([idx for rank in SHARDS[shards] for idx in rank])])
    grads = [k for k in want if k.startswith("grad.")]
    assert len(grads) > 20 and any(k.startswith("grad.objective.") for k in grads) == (spec is not None)
    for rank in range(WORLD):
        got = {k.split("/", 1)[1]: v for k, v in tensors[rank].items() if k.startswith(case + "/")}
        assert_same(got, want, want.keys())


def test_unsynchronised_projections_would_differ(ranks):
    """Guards the distillation case: without averaging, the objective's gradients are each rank's own."""
    tensors, _, _ = ranks
    want = one_step(DISTILL_SPEC, [np.concatenate([idx for rank in SHARDS["unequal"] for idx in rank])])
    key = next(k for k in want if k.startswith("grad.objective."))
    for rank in range(WORLD):
        assert not torch.allclose(tensors[rank][f"unsynced/{key}"], want[key], rtol=1e-3, atol=1e-6)


def test_accumulation_synchronises_gradients_on_the_last_micro_batch_only(ranks):
    tensors, _, _ = ranks
    for rank in range(WORLD):
        assert tensors[rank]["distill_accum/sync"].tolist() == [False, True]


def test_two_ranks_train_like_one_process_with_the_same_global_batch(ranks, tmp_path):
    """``train.batch_size`` is the global batch: same examples per step, same weights, fresh dropout per rank."""
    tensors, info, _ = ranks
    alone = train_run(tmp_path / "alone")
    for step, batch in enumerate(alone["seen"]):  # one micro-batch per step alone, 2 x 2 over the ranks
        together = [i for rank in range(WORLD) for i in sum(info[rank]["seen"][2 * step : 2 * step + 2], [])]
        assert sorted(together) == sorted(batch)
    assert_same({k.split("/", 1)[1]: v for k, v in tensors[0].items() if k.startswith("train/")}, alone["weights"],
                alone["weights"].keys())
    assert info[0]["draws"] != info[1]["draws"]  # each rank draws its own dropout masks


def test_a_resumed_run_draws_what_each_rank_would_have_drawn(ranks):
    """Each rank's RNG state is saved with the checkpoint: dropout after a resume is the uninterrupted run's."""
    _, info, _ = ranks
    for rank in range(WORLD):
        assert info[rank]["resumed_draws"] == info[rank]["draws"][-2:]  # step 3: 2 micro-batches per rank


def test_rank_rng_states_restore_only_for_the_world_size_that_saved_them(tmp_path):
    from kd.train.checkpoint import restore_rng, save_trainer_state

    model = torch.nn.Linear(2, 2)
    saved = {f"cpu.rank{r}": torch.manual_seed(100 + r).get_state() for r in range(2)}
    save_trainer_state(tmp_path, {"model": model}, torch.optim.SGD(model.parameters(), lr=0.1), {}, saved)
    before = torch.manual_seed(7).get_state()
    assert not restore_rng(tmp_path, torch.device("cpu"), rank=1, world_size=3)
    assert torch.equal(torch.get_rng_state(), before)
    assert restore_rng(tmp_path, torch.device("cpu"), rank=1, world_size=2)
    assert torch.equal(torch.get_rng_state(), saved["cpu.rank1"])


def test_a_single_process_restores_only_its_training_devices_rng_state(tmp_path, monkeypatch):
    """A run saved with 2 visible GPUs (and by torchrun ranks) resumes in a process with one:
    only the training device's state is set, never a device that may not exist ("invalid device ordinal")."""
    from kd.train.checkpoint import restore_rng

    saved = {key: torch.tensor([i], dtype=torch.uint8)
             for i, key in enumerate(["cpu.rank0", "cuda.rank0", "cuda.rank1", "cuda0", "cuda1"])}
    saved["cpu"] = torch.manual_seed(3).get_state()
    save_file(saved, str(tmp_path / "rng.safetensors"))
    device_calls, all_calls = [], []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: device_calls.append((int(state), device)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: all_calls.append(states))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    torch.manual_seed(7)
    assert restore_rng(tmp_path, torch.device("cuda", 0))
    assert device_calls == [(3, torch.device("cuda", 0))] and all_calls == []
    assert torch.equal(torch.get_rng_state(), saved["cpu"])
    device_calls.clear()
    assert restore_rng(tmp_path, torch.device("cpu"))  # a CPU run sets no CUDA state
    assert device_calls == [] and all_calls == []


def test_global_batch_must_split_over_ranks_and_micro_batches(tmp_path):
    student, loss_fn, _ = build_case(None)
    cfg = TrainConfig(**{**TRAIN_CFG, "batch_size": 6}, grad_accum=2)
    with pytest.raises(ValueError, match=r"multiple of world size x train.grad_accum = 4 x 2 = 8"):
        train(student, loss_fn, url_like_set(48), lambda m: {"roc_auc": 0.5}, cfg, tmp_path, save=lambda m, f: None,
              device=torch.device("cpu"), dist_info=DistInfo(0, 4, 0))


def test_train_keeps_ranks_identical_and_only_rank_0_writes(ranks):
    tensors, info, run = ranks
    keys = [k for k in tensors[0] if k.startswith("train/")]
    assert any(k.startswith("train/weight.objective.") for k in keys)
    assert_same(tensors[1], tensors[0], keys)  # rank 1 started from other weights: broadcast + sync
    assert len(info[0]["saves"]) == 2 and info[1]["saves"] == []  # evaluations at steps 2 and 3
    assert "step 2" in info[0]["printed"] and info[1]["printed"] == ""
    assert len(list((run / "tb").rglob("events.out.tfevents.*"))) >= 1
    pids = {f.name.split(".")[-2] for f in (run / "tb").rglob("events.out.tfevents.*")}
    assert len(pids) == 1, f"TensorBoard files from several processes: {pids}"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002", "step-000003"]
    assert (run / "checkpoints" / "step-000003" / "objective.safetensors").is_file()
    assert (run / "train_history.json").is_file()


def early_stop_worker(rank: int, port: int, out_dir: str) -> None:
    """One rank of a run whose validation metric differs between ranks (mixed GPUs, non-deterministic
    kernels): rank 0's falls from the first evaluation on, rank 1's keeps rising."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))
    dist.init_process_group("gloo", timeout=timedelta(seconds=30))  # a rank left waiting fails within 30 s
    try:
        scores = iter([0.5, 0.4, 0.3, 0.2, 0.1, 0.0, 0.0, 0.0] if rank == 0 else [0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.0, 1.0])
        cfg = TrainConfig(epochs=1, batch_size=4, eval_every=1, patience=2, log_every=1, precision="fp32")
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            result = train(bert(16, 1, 0), cross_entropy_sum, url_like_set(32), lambda m: {"roc_auc": next(scores)}, cfg,
                           Path(out_dir) / "run", save=lambda m, f: m.save_pretrained(f), device=torch.device("cpu"),
                           dist_info=DistInfo(rank, WORLD, rank))
        outcome = {"steps": result.steps, "best_step": result.best_step, "best_metric": result.best_metric,
                   "stopped_early": result.stopped_early}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(outcome))
    finally:
        dist.destroy_process_group()


def test_ranks_whose_validation_metrics_differ_stop_at_the_same_step(tmp_path):
    """Rank 0 decides: both ranks keep step 1 as best and stop at step 3 (patience 2), and exit; had each
    rank decided for itself, rank 0 would stop there and leave rank 1 waiting in its next step's all-reduce."""
    processes = mp.start_processes(early_stop_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=False,
                                   start_method="spawn")
    deadline = time.monotonic() + 120
    while not processes.join(timeout=5):  # raises if a rank failed
        if time.monotonic() > deadline:
            for process in processes.processes:
                process.kill()
            pytest.fail("the ranks hang")
    outcomes = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert outcomes == [{"steps": 3, "best_step": 1, "best_metric": 0.5, "stopped_early": True}] * WORLD
    assert (tmp_path / "run" / "best").resolve().name == "step-000001"
    assert (tmp_path / "run" / "last").resolve().name == "step-000003"


@pytest.fixture
def one_rank_group(tmp_path):
    """A one-process gloo group, joined as a ``torchrun`` rank joins its own; left after the test if still open."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_the_recipes_leave_the_process_group_when_they_end_or_fail(one_rank_group, tiny_teacher_run, tmp_path):
    """A gloo rank that exits with its group open can abort ("terminate called without an active exception")."""
    import train_student
    import train_teacher
    from conftest import student_overrides

    from kd.data.sources import DataError

    overrides = [arg for o in student_overrides(tiny_teacher_run, "student") for arg in ("--set", o)]
    train_student.main(overrides)
    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store2'}", rank=0, world_size=1)
    with pytest.raises(DataError, match="missing.csv"):
        train_teacher.main(["--out", str(tmp_path / "teacher"), "--set", f"data.sources=[{tmp_path / 'missing.csv'}]"])
    assert not dist.is_initialized()
