"""Process-group helpers so that one loop runs alone or under ``torchrun``."""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from kd.errors import UsageError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment
    (NCCL on CUDA, gloo on CPU); a plain single process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend)
    return DistInfo(rank, world_size, local_rank)


def close_distributed() -> None:
    """Leave the process group that :func:`init_distributed` joined (every rank, after
    its last collective; every command that may run under torchrun calls it on its
    way out): a gloo process that exits with its group still open can abort
    ("terminate called without an active exception"). No-op without a group."""
    if dist.is_initialized():
        dist.destroy_process_group()


def gather_rng_states(info: DistInfo, device: torch.device) -> dict[str, torch.Tensor]:
    """Every rank's torch RNG states, ``{"cpu.rank{r}": state}`` (and ``"cuda.rank{r}"``
    for the rank's GPU), on every rank: what each rank's dropout draws next, for an
    exact resume. A collective: every rank calls it."""
    mine = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(device)
    gathered = {}
    for kind, state in mine.items():
        parts = [torch.empty_like(state, device=device) for _ in range(info.world_size)]
        dist.all_gather(parts, state.to(device))  # NCCL gathers GPU tensors only
        gathered.update({f"{kind}.rank{rank}": part.cpu() for rank, part in enumerate(parts)})
    return gathered


def collective_device() -> torch.device:
    """The device whose tensors the default process group's collectives take:
    the CPU if a backend serves it (gloo), else this process's GPU (NCCL serves
    CUDA tensors only, and so does a gloo group registered as ``cuda:gloo``):
    ``cuda`` is the current device, which :func:`init_distributed` set to the local rank's."""
    if torch.device("cpu") in dist.group.WORLD._device_types:
        return torch.device("cpu")
    return torch.device("cuda")


def all_reduce_sum(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over all ranks, on the device :func:`collective_device` names;
    the sum comes back on ``value``'s device (identity in a single process)."""
    if info.enabled:
        summed = value.to(collective_device(), copy=True)
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        value = summed.to(value.device)
    return value


def average_gradients(params: list[torch.Tensor], info: DistInfo) -> None:
    """Replace each parameter's gradient by its mean over all ranks, in place.

    What DDP does for the model it wraps, for trainable parameters outside it
    (e.g. an objective's hidden-state projections): one all-reduce of all the
    gradients flattened into one buffer of ``sum(p.numel())`` values. A
    parameter without a gradient counts as zero (every rank must send the same
    layout). Identity in a single process.
    """
    if not info.enabled or not params:
        return
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
    flat = torch.cat([param.grad.reshape(-1) for param in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= info.world_size
    for param, piece in zip(params, flat.split([param.numel() for param in params])):
        param.grad.copy_(piece.view_as(param))


def broadcast_from_main(value: float, info: DistInfo, device: torch.device) -> float:
    """Rank 0's ``value`` on every rank (itself in a single process): for what rank 0
    alone decides, so that every rank acts alike (e.g. the validation metric that picks
    the best checkpoint and stops early). A collective: every rank calls it. Sent as a
    float64 tensor on ``device``: NCCL serves CUDA tensors only."""
    if not info.enabled:
        return value
    tensor = torch.tensor(value, dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return tensor.item()


def broadcast_parameters(modules: list[torch.nn.Module], info: DistInfo) -> None:
    """Copy rank 0's parameters and buffers of ``modules`` to every rank (what
    DDP does for the model it wraps when it is built). Identity in a single process."""
    if not info.enabled:
        return
    with torch.no_grad():
        for module in modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)


@contextmanager
def main_rank_first(timeout: timedelta, what: str, setting: str) -> Iterator[None]:
    """Run the block on rank 0 first, then on the other ranks, which wait for it for up to
    ``timeout``; a plain block without a default process group of more than one rank.

    The wait is a barrier in a gloo group of its own (CPU, no tensors) created with
    ``timeout``: the training group's timeout (NCCL's default: 10 minutes) is too
    short for long work on rank 0, and a timed-out NCCL barrier is ended by the
    watchdog without a Python error. A rank whose barrier fails after ``timeout``
    raises :class:`kd.errors.UsageError` saying that rank 0 took longer than that
    to do ``what`` and naming ``setting``, the knob that sets ``timeout``.
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        yield
        return
    began = time.monotonic()
    group = dist.new_group(backend="gloo", timeout=timeout)

    def wait() -> None:
        try:
            dist.barrier(group=group)
        except RuntimeError as err:
            if time.monotonic() - began < timeout.total_seconds():
                raise  # not the wait running out: e.g. a rank failed
            raise UsageError(f"rank 0 took longer than the other ranks wait ({timeout.total_seconds() / 60:g} min) "
                             f"to {what}: set {setting} to wait longer") from err

    try:
        if dist.get_rank() != 0:
            wait()
        yield
        if dist.get_rank() == 0:
            wait()
    finally:
        dist.destroy_process_group(group)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def default_device(info: DistInfo) -> torch.device:
    return torch.device("cuda", info.local_rank) if torch.cuda.is_available() else torch.device("cpu")
