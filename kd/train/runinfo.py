"""What makes a run reproducible and self-describing: versions, git commit, seed;
and the check that ``--resume`` continues the run that was started."""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import platform
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from kd.errors import UsageError
from kd.train.checkpoint import STATE_DIR
from kd.train.config import read_yaml

PACKAGES = ("torch", "transformers", "datasets", "bitsandbytes", "peft", "scikit-learn", "tldextract", "numpy")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def cpu_model_name(cpuinfo: str | Path = "/proc/cpuinfo") -> str | None:
    """The CPU's marketing name (Linux ``model name``, e.g. ``AMD EPYC``), or ``None``
    where there is no such file. A cloud VM can come back on another host after a
    restart, and its speed changes with it, so every timed report names the CPU."""
    try:
        lines = Path(cpuinfo).read_text(errors="replace").splitlines()
    except OSError:
        return None
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name") and ":" in line]
    return names[0] if names and names[0] else None


def device_description() -> str:
    """``NVIDIA H200`` on CUDA; ``CPU (AMD EPYC, x86_64, 2 threads)`` elsewhere."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    parts = [cpu_model_name(), platform.machine() or platform.processor(), f"{torch.get_num_threads()} threads"]
    return f"CPU ({', '.join(p for p in parts if p)})"


# --- --resume continues the same run ---------------------------------------------------------

IGNORED_ON_RESUME = ("out_dir",)
"""Config keys that may differ on resume: the folder may have been moved."""


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}`` (lists stay values)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def source_hashes(data_cfg) -> dict[str, str]:
    """SHA-256 of each local source file of ``data_cfg`` (a :class:`kd.data.DataConfig`),
    keyed by its path as written in the config, as the run's data report records them."""
    from kd.data.splits import _resolve, file_sha256

    data_cfg = copy.deepcopy(data_cfg)
    data_cfg.resolve_data_dir()
    data_dir = Path(data_cfg.data_dir) if data_cfg.data_dir else None
    specs = [*data_cfg.source_specs(), *(s for group in data_cfg.test_set_specs().values() for s in group)]
    hashes = {}
    for spec in specs:
        path = _resolve(spec, data_dir)
        if path is not None and path.is_file():
            hashes[spec.path] = file_sha256(path)
    return hashes


def resume_changes(out_dir: Path, current: dict, data_cfg) -> dict[str, tuple]:
    """``{key: (old, new)}``: how ``current`` (the config as ``OUT/config.yaml`` would
    record it) and the data files of ``data_cfg`` differ from the run in ``out_dir``.
    A changed source file shows as ``data.source_hashes[PATH]``."""
    out_dir = Path(out_dir)
    state = out_dir / "last" / STATE_DIR / "state.json"
    saved_file, report_file = out_dir / "config.yaml", out_dir / "data_report.json"
    if not (state.is_file() and saved_file.is_file() and report_file.is_file()):
        raise UsageError(f"--resume: {out_dir} holds no resumable run (config.yaml, data_report.json and "
                         "last/trainer_state/ are written by a run's first checkpoint); run without --resume")
    saved, now = flatten(read_yaml(saved_file.read_text(), str(saved_file)) or {}), flatten(current)
    changes = {key: (saved.get(key), now.get(key)) for key in sorted(saved.keys() | now.keys())
               if saved.get(key) != now.get(key) and key not in IGNORED_ON_RESUME}
    saved_hashes = json.loads(report_file.read_text()).get("source_hashes", {})
    for path, new in source_hashes(data_cfg).items():
        old = saved_hashes.get(path)
        if old is not None and old != new:
            changes[f"data.source_hashes[{path}]"] = (f"sha256 {old[:12]}", f"sha256 {new[:12]}")
    return changes


def check_resume(out_dir: Path, current: dict, data_cfg, allowed: Sequence[str] = ()) -> dict[str, tuple]:
    """Refuse to resume ``out_dir`` with another configuration or other data
    (:func:`resume_changes`), except for the keys in ``allowed`` (a key also
    allows the keys under it: ``train`` allows ``train.epochs``). A resumed run
    restores the optimizer, scheduler and data order, so a new value would be
    ignored or mix new data into what was trained on, while ``run_info.json``
    claimed it. Returns the allowed changes; raises :class:`UsageError` that
    lists each refused one as ``key: old -> new``.
    """
    known = flatten(current).keys() | {"data.source_hashes"}
    unknown = [a for a in allowed if not any(k == a or k.startswith(a + ".") or k.startswith(a + "[") for k in known)]
    if unknown:
        raise UsageError(f"--allow-changed names unknown config key(s) {unknown}; e.g. train.epochs,train.max_steps")

    def is_allowed(key: str) -> bool:
        return any(key == a or key.startswith(a + ".") or key.startswith(a + "[") for a in allowed)

    changes = resume_changes(out_dir, current, data_cfg)
    refused = {k: v for k, v in changes.items() if not is_allowed(k)}
    if refused:
        listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in refused.items())
        keys = ",".join(k.split("[")[0] for k in refused)
        raise UsageError(f"--resume: {out_dir} was started with another configuration ({listed}); resume with the "
                         f"same settings, start over with --overwrite, start a new --out, or accept the change with --allow-changed {keys}")
    return {k: v for k, v in changes.items() if is_allowed(k)}


def resolved_config(cfg) -> dict:
    """``cfg`` as a dict with its data folder resolved, as a run records it in ``config.yaml``."""
    cfg = copy.deepcopy(cfg)
    if dataclasses.is_dataclass(cfg.data):
        cfg.data.resolve_data_dir()
    return dataclasses.asdict(cfg)


RUN_ENTRIES = frozenset({".lock", "config.yaml", "splits.csv", "data_report.json", "tb", "checkpoints", "best", "last",
                         "train_history.json", "results.json", "roc.png", "scores.csv.gz", "demo_results.json"})
"""What a training run (and kd.demo) writes at the top of its folder; ``--overwrite`` deletes these, nothing else."""


def is_unfinished_run(out_dir: Path, current: dict) -> bool:
    """Whether ``out_dir`` holds only a run's own files, no ``results.json`` (the
    run never finished) and a ``config.yaml`` with the sections of ``current``
    (the same recipe: a teacher's, an encoder student's and a QLoRA student's
    configs differ in their top-level keys)."""
    names = {p.name for p in out_dir.iterdir()}
    if "results.json" in names or not names <= RUN_ENTRIES or not (out_dir / "config.yaml").is_file():
        return False
    try:
        saved = read_yaml((out_dir / "config.yaml").read_text(), str(out_dir / "config.yaml"))
    except (OSError, UsageError):
        return False
    return isinstance(saved, dict) and saved.keys() == current.keys()


def check_new_run_folder(out_dir: Path, current: dict) -> bool:
    """Refuse (:class:`UsageError`, naming ``--resume`` and ``--overwrite``) a new run in
    ``out_dir`` that would destroy what it was not asked to: a finished run, another
    recipe's run or the user's own files. A missing or empty folder (a leftover
    ``.lock`` aside) passes (False), and so does an unfinished run of the same recipe
    (:func:`is_unfinished_run`; True: the new run starts it over). Reads only."""
    from kd.train.checkpoint import LOCK_FILE

    names = sorted(p.name for p in out_dir.iterdir() if p.name != LOCK_FILE) if out_dir.is_dir() else []
    if not names:
        return False
    if is_unfinished_run(out_dir, current):
        print(f"starting over in {out_dir}: its unfinished run is replaced (--resume would continue it)")
        return True
    if "results.json" in names:
        what = "a finished run (results.json)"
    else:
        what = f"files that are no unfinished run of this recipe ({', '.join(names[:6])}{', ...' if len(names) > 6 else ''})"
    raise UsageError(f"run folder {out_dir} holds {what}; continue that run with --resume, start over with --overwrite "
                     "(deletes its checkpoints and results), or write to another --out")


def clear_previous_run(out_dir: Path) -> None:
    """Delete an earlier run's own files (:data:`RUN_ENTRIES`, the lock aside) from
    ``out_dir``, for ``--overwrite``; any other file stays."""
    from kd.train.checkpoint import LOCK_FILE

    for path in out_dir.iterdir():
        if path.name in RUN_ENTRIES and path.name != LOCK_FILE:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def remove_failed_run_folder(out_dir: Path) -> None:
    """Delete ``out_dir``, a run folder created by a run that failed, unless it got as
    far as a checkpoint (``last``, which ``--resume`` continues from)."""
    if out_dir.is_dir() and not (out_dir / "last").is_symlink():
        shutil.rmtree(out_dir)


@contextmanager
def claim_run_folder(out_dir: Path, *, resume: bool, allowed: Sequence[str], current: dict, data_cfg,
                     overwrite: bool = False, inputs: dict[str, str | Path | None] | None = None) -> Iterator[None]:
    """Run the block as the only writer of ``out_dir`` (:func:`kd.train.checkpoint.run_folder_lock`).

    ``out_dir`` must lie apart from every path in ``inputs`` (``{option: path}``,
    :func:`kd.train.outputs.check_apart`). With ``resume`` the run must continue as it
    started (:func:`check_resume`); without, the folder must be free for a new run
    (:func:`check_new_run_folder`). With ``overwrite``, or over an unfinished run of
    the recipe, the earlier run's files are deleted first (:func:`clear_previous_run`).
    A folder this call created is removed again if the block fails before the run's
    first checkpoint (:func:`remove_failed_run_folder`): a failed run leaves nothing
    half-written.
    """
    from kd.train.outputs import check_apart
    from kd.train.checkpoint import run_folder_lock

    out_dir = Path(out_dir)
    if allowed and not resume:
        raise UsageError("--allow-changed goes with --resume")
    if overwrite and resume:
        raise UsageError("--overwrite starts the run over and --resume continues it: give one of them")
    check_apart(out_dir, "--out", inputs or {})
    is_main = int(os.environ.get("RANK", "0")) == 0  # the other torchrun ranks share rank 0's folder
    # Before the lock: a refused run leaves the folder as it was.
    start_over = overwrite or (is_main and not resume and check_new_run_folder(out_dir, current))
    created = not out_dir.exists()
    # A busy folder stops in run_folder_lock, outside the try: a run that found no folder
    # must not remove the one another run created meanwhile and holds.
    with run_folder_lock(out_dir):
        try:
            if resume:
                for key, (old, new) in check_resume(out_dir, current, data_cfg, allowed).items():
                    print(f"resuming {out_dir} with {key} changed: {old!r} -> {new!r} (--allow-changed)")
            elif start_over and is_main:
                clear_previous_run(out_dir)
            yield
        except BaseException:
            if created and is_main:
                remove_failed_run_folder(out_dir)
            raise
