"""The teacher-logit cache under concurrency: two gloo ranks (torchrun) and two
independent processes (parallel ``kd.ablation --shard`` workers) on one file."""
import json
import multiprocessing
import os
import socket
import threading
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from kd.train.teacher_cache import cached_teacher_logits, example_keys

URLS = [f"site{i}.example/login?id={i}" for i in range(40)]


def fake_logits(urls: list[str]) -> torch.Tensor:
    """``(N, 2)`` float32 logits that depend on the URL only (a deterministic stand-in teacher)."""
    keys = torch.from_numpy(example_keys(urls))
    return torch.stack([(keys % 997).float() / 100, (keys % 991).float() / -100], dim=1)


def shard_worker(urls: list[str], cache: str, barrier, out: str) -> None:
    """Score ``urls`` through the cache; both workers meet at ``barrier`` inside
    ``compute`` if both get there (the race), else go on after a timeout."""
    computed = []

    def compute(indices: np.ndarray) -> torch.Tensor:
        try:
            barrier.wait(timeout=3)
        except threading.BrokenBarrierError:
            pass
        computed.extend(urls[i] for i in indices)
        return fake_logits([urls[i] for i in indices])

    logits = cached_teacher_logits(urls, Path(cache), compute, log=lambda *a, **k: None)
    save_file({"logits": logits}, out + ".safetensors")
    Path(out + ".json").write_text(json.dumps(computed))


def test_concurrent_processes_share_one_cache_file(tmp_path):
    cache = tmp_path / "teacher-logits" / "t.safetensors"
    shards = [URLS[:30], URLS[10:] + URLS[:5]]  # overlapping, in different orders
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [context.Process(target=shard_worker, args=(urls, str(cache), barrier, str(tmp_path / f"w{i}")))
               for i, urls in enumerate(shards)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]

    for i, urls in enumerate(shards):
        torch.testing.assert_close(load_file(str(tmp_path / f"w{i}.safetensors"))["logits"], fake_logits(urls))
    stored = load_file(str(cache))
    keys = stored["keys"].tolist()
    assert len(keys) == len(set(keys)) == len(URLS) and set(keys) == set(example_keys(URLS).tolist())
    by_key = dict(zip(example_keys(URLS).tolist(), fake_logits(URLS)))
    torch.testing.assert_close(stored["logits"], torch.stack([by_key[k] for k in keys]))
    computed = [u for i in range(2) for u in json.loads((tmp_path / f"w{i}.json").read_text())]
    assert sorted(computed) == sorted(URLS)  # no row computed twice
    assert not [p.name for p in cache.parent.iterdir() if p.name.endswith(".tmp")]


def rank_worker(rank: int, port: int, cache: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))  # a hang fails within a minute
    try:
        calls = []

        def compute(indices: np.ndarray) -> torch.Tensor:
            calls.append(len(indices))
            time.sleep(1)  # both ranks would be inside compute at once, were they not ordered
            return fake_logits([URLS[i] for i in indices])

        logits = cached_teacher_logits(URLS, Path(cache), compute, log=lambda *a, **k: None)
        dist.barrier()
        save_file({"logits": logits}, f"{out}/rank{rank}.safetensors")
        Path(f"{out}/rank{rank}.json").write_text(json.dumps(calls))
    finally:
        dist.destroy_process_group()


def run_two_ranks(worker, cache: Path, out: Path) -> list:
    """Spawn ``worker(rank, port, cache, out)`` on 2 gloo ranks; what each wrote to ``out/rank{r}.json``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(worker, args=(port, str(cache), str(out)), nprocs=2, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_under_torchrun_rank_zero_fills_the_cache_and_the_others_read_it(tmp_path):
    cache = tmp_path / "t.safetensors"
    calls = run_two_ranks(rank_worker, cache, tmp_path)
    assert calls == [[len(URLS)], []]
    for r in range(2):
        torch.testing.assert_close(load_file(str(tmp_path / f"rank{r}.safetensors"))["logits"], fake_logits(URLS))
    assert load_file(str(cache))["keys"].tolist() == example_keys(URLS).tolist()


def slow_rank_worker(rank: int, port: int, cache: str, out: str) -> None:
    """One rank of a run whose rank 0 takes 8 s to fill the cache while the ranks wait 3 s
    (``KD_TEACHER_CACHE_WAIT_MINUTES=0.05``); writes the error each rank got."""
    from kd.errors import UsageError

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      KD_TEACHER_CACHE_WAIT_MINUTES="0.05")
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))  # what the old barrier waited: no error in 8 s
    try:
        def compute(indices: np.ndarray) -> torch.Tensor:
            time.sleep(8)
            return fake_logits([URLS[i] for i in indices])

        try:
            cached_teacher_logits(URLS, Path(cache), compute, log=lambda *a, **k: None)
            error = None
        except UsageError as err:
            error = str(err)
        Path(f"{out}/rank{rank}.json").write_text(json.dumps(error))
    finally:
        dist.destroy_process_group()


def test_ranks_that_wait_too_long_for_rank_zero_say_which_setting_waits_longer(tmp_path):
    """The ranks wait in a gloo group of their own with the configured limit, not the training group's
    (NCCL: 10 minutes, then the watchdog kills them without a Python error)."""
    cache = tmp_path / "t.safetensors"
    errors = run_two_ranks(slow_rank_worker, cache, tmp_path)
    for error in errors:  # rank 1 after 3 s; rank 0 when it finds rank 1 gone
        assert error is not None and "KD_TEACHER_CACHE_WAIT_MINUTES" in error and "(0.05 min)" in error, errors
    assert load_file(str(cache))["keys"].tolist() == example_keys(URLS).tolist()  # rank 0's work is kept


def test_the_cache_wait_must_be_a_positive_number_of_minutes(monkeypatch):
    from kd.errors import UsageError
    from kd.train.teacher_cache import cache_wait_timeout

    assert cache_wait_timeout() == timedelta(minutes=60)
    monkeypatch.setenv("KD_TEACHER_CACHE_WAIT_MINUTES", "90")
    assert cache_wait_timeout() == timedelta(minutes=90)
    for bad in ("0", "-1", "nan", "inf", "an hour"):
        monkeypatch.setenv("KD_TEACHER_CACHE_WAIT_MINUTES", bad)
        with pytest.raises(UsageError, match="KD_TEACHER_CACHE_WAIT_MINUTES must be a number of minutes > 0"):
            cache_wait_timeout()
