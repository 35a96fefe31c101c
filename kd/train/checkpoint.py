"""Checkpoints: Hugging Face folders written atomically, plus resumable trainer state.

Layout of a run folder::

    OUT/checkpoints/step-000120/   save_pretrained folder (safetensors), tokenizer,
                                   run_info.json, metrics.json
    OUT/best -> checkpoints/step-000120     (symbolic links, swapped atomically)
    OUT/last -> checkpoints/step-000200     (+ trainer_state/ for --resume)
    OUT/.lock                               held by the run writing the folder (run_folder_lock)

A checkpoint is written under a temporary name and renamed into place, and the
``best`` / ``last`` links are replaced with ``os.replace``: a crash at any
moment leaves the previous complete checkpoint in place, never a half-written
one. Nothing here is pickled: tensors go to safetensors, the rest to JSON.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from kd.errors import UsageError
from kd.eval.report import write_json
from kd.train.outputs import publish_folder

STATE_DIR = "trainer_state"


def write_checkpoint(root: Path, name: str, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_folder)`` and rename the folder to ``root/name``
    (:func:`kd.train.outputs.publish_folder`): an existing folder of that name is
    replaced only after the new one is complete, and a failed write leaves no
    temporary folder behind."""
    return publish_folder(root / name, write)


def point_link(link: Path, target: Path) -> None:
    """Make ``link`` a relative symbolic link to ``target``, atomically."""
    tmp = link.with_name(f".{link.name}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(os.path.relpath(target, link.parent), tmp)
    os.replace(tmp, link)


def prune_checkpoints(out_dir: Path, keep_links=("best", "last")) -> None:
    """Delete checkpoint folders that no link points to any more."""
    keep = {(out_dir / name).resolve() for name in keep_links if (out_dir / name).is_symlink()}
    for folder in (out_dir / "checkpoints").glob("step-*"):
        if folder.resolve() not in keep:
            shutil.rmtree(folder)


# --- optimizer / scheduler / RNG state, without pickle ------------------------------------


def save_trainer_state(folder: Path, modules: dict[str, torch.nn.Module], optimizer, state: dict,
                       rank_rng: dict[str, torch.Tensor] | None = None) -> None:
    """Write the full training state into ``folder``.

    ``modules``' weights go to ``{name}.safetensors`` (the exact training
    state_dict, including what ``save_pretrained`` may drop), the optimizer's
    tensors to ``optimizer.safetensors``, the torch RNG states to
    ``rng.safetensors`` (with ``rank_rng``, every rank's under torchrun:
    :func:`kd.train.distributed.gather_rng_states`), and the JSON-able rest
    (step, epoch, scheduler, scaler, early-stopping state, optimizer
    hyper-parameters) to ``state.json``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for name, module in modules.items():
        save_model(module, str(folder / f"{name}.safetensors"))
    opt = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, entries in opt["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{pid}/{key}"] = value.contiguous()
            else:
                scalars[f"{pid}/{key}"] = value
    save_file(tensors, str(folder / "optimizer.safetensors"))
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file({**rng, **(rank_rng or {})}, str(folder / "rng.safetensors"))
    write_json(folder / "state.json", {**state, "optimizer_param_groups": opt["param_groups"], "optimizer_scalars": scalars})


def load_trainer_state(folder: Path, modules: dict[str, torch.nn.Module], optimizer, device) -> dict:
    """Restore what :func:`save_trainer_state` wrote but the RNG states (:func:`restore_rng`);
    return the JSON state."""
    if not (folder / "state.json").is_file():
        raise FileNotFoundError(f"no resumable trainer state in {folder}")
    state = json.loads((folder / "state.json").read_text())
    for name, module in modules.items():
        load_model(module, str(folder / f"{name}.safetensors"), device=str(device))
    tensors = load_file(str(folder / "optimizer.safetensors"), device=str(device))
    opt_state: dict[int, dict] = {}
    for key, value in tensors.items():
        pid, name = key.split("/", 1)
        opt_state.setdefault(int(pid), {})[name] = value
    for key, value in state.pop("optimizer_scalars").items():
        pid, name = key.split("/", 1)
        opt_state.setdefault(int(pid), {})[name] = value
    # AdamW keeps `step` on the CPU unless fused/capturable.
    for entries in opt_state.values():
        if "step" in entries and torch.is_tensor(entries["step"]):
            entries["step"] = entries["step"].cpu()
    optimizer.load_state_dict({"state": opt_state, "param_groups": state.pop("optimizer_param_groups")})
    return state


def device_rng_state(rng: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor | None:
    """The CUDA state that an ``rng.safetensors`` holds for ``device`` (``cuda{index}``), or None
    (a CPU device, or a device the saving process did not have).

    Only the training device's state: a run saved with more GPUs visible than
    the resuming process has also holds states of devices that do not exist
    now ("invalid device ordinal"), and the per-rank ``cuda.rank{r}`` entries
    are not devices at all.
    """
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    return rng.get(f"cuda{index}")


def restore_rng(folder: Path, device: torch.device, rank: int = 0, world_size: int = 1) -> bool:
    """Set the torch RNG states that :func:`save_trainer_state` saved in ``folder``.

    One process gets the CPU state and its training ``device``'s state it saved (True).
    Under torchrun (``world_size`` > 1) this rank gets its own, if the checkpoint was
    written by ``world_size`` ranks (True); otherwise nothing changes (False) and the caller reseeds.
    """
    rng = load_file(str(folder / "rng.safetensors"))
    if world_size > 1:
        if sum(key.startswith("cpu.rank") for key in rng) != world_size:
            return False
        torch.set_rng_state(rng[f"cpu.rank{rank}"])
        if device.type == "cuda" and f"cuda.rank{rank}" in rng:
            torch.cuda.set_rng_state(rng[f"cuda.rank{rank}"], device)
        return True
    torch.set_rng_state(rng["cpu"])
    device_state = device_rng_state(rng, device)
    if device_state is not None:
        torch.cuda.set_rng_state(device_state, device)
    return True


# --- one writer per run folder ------------------------------------------------------------

LOCK_FILE = ".lock"


@contextmanager
def run_folder_lock(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``OUT/.lock`` while the block runs.

    A second run into the same folder fails at once with a :class:`UsageError`
    naming the folder, before it reads or writes anything else, instead of
    dying after its training with the first run's work overwritten. The lock
    goes with the open file: it is released when the block ends and when the
    process dies, even by ``kill -9``, so no stale lock is ever left. Under
    ``torchrun`` only rank 0 takes it (the ranks share one folder).
    """
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise UsageError(f"run folder {out_dir} is in use by {holder} (lock {out_dir / LOCK_FILE}): "
                             "wait for that run to end, or write to another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}\n")
        handle.flush()
        yield
