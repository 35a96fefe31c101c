"""The teacher-logit cache: a frozen teacher's logits computed once per example
and reused by every run, split order and subset that uses the same teacher.

The teacher-logit cache is keyed by *example identity* (a hash of the
normalised URL), never by step or batch position: with shuffling, length
bucketing, gradient accumulation or a different split order, each example
still meets its own teacher logits.
"""
from __future__ import annotations

import fcntl
import hashlib
import math
import os
import tempfile
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from kd.data.batching import TokenizedSet
from kd.errors import UsageError
from kd.eval.inference import predict_tokenized
from kd.train.distributed import main_rank_first
from models.paths import cache_root


CACHE_WAIT_SETTING = "KD_TEACHER_CACHE_WAIT_MINUTES"
"""Environment variable: how long (minutes, default 60) the other torchrun ranks wait
for rank 0 to fill the teacher-logit cache (a large transfer set, a BERT-base teacher)."""


def cache_wait_timeout() -> timedelta:
    """The wait of :data:`CACHE_WAIT_SETTING`; a :class:`kd.errors.UsageError` unless it is a number > 0."""
    raw = os.environ.get(CACHE_WAIT_SETTING, "60")
    try:
        minutes = float(raw)
    except ValueError:
        minutes = math.nan
    if not (math.isfinite(minutes) and minutes > 0):
        raise UsageError(f"{CACHE_WAIT_SETTING} must be a number of minutes > 0, got {raw!r}")
    return timedelta(minutes=minutes)


def example_keys(urls: list[str]) -> np.ndarray:
    """A 63-bit identity per (normalised) URL: the first 8 bytes of its BLAKE2b hash."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(u.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little") >> 1 for u in urls],
        dtype=np.int64,
    )


FINGERPRINTED_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.model", "config.json", "tokenizer.json",
                       "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt",
                       "vocab.json", "merges.txt")
"""The files of a model folder that decide its logits for a URL: the weights in any
format transformers reads, the config (labels, architecture) and the tokenizer."""


def model_fingerprint(folder: Path, max_length: int) -> str:
    """Identifies a teacher (weights, config, tokenizer: :data:`FINGERPRINTED_FILES`)
    and the tokenisation length, for cache names: SHA-256 over each such file's
    name, size and bytes, in name order."""
    digest = hashlib.sha256(f"max_length={max_length}".encode())
    files = sorted({p for pattern in FINGERPRINTED_FILES for p in Path(folder).glob(pattern) if p.is_file()})
    for path in files:
        digest.update(f"\0{path.name}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def teacher_scorer(teacher: torch.nn.Module, data: TokenizedSet, *, teacher_input_ids: torch.Tensor | None = None,
                   batch_size: int = 256, autocast_dtype=None):
    """``compute(indices)`` -> the frozen ``teacher``'s logits ``(len(indices), C)``
    float32 for rows ``indices`` of ``data``, a set already tokenised with the
    teacher's vocabulary, or with a pruned copy of it whose ids
    ``teacher_input_ids`` ``(K,)`` maps back (student id -> teacher id, as
    the live teacher reads them): the ``compute`` of :func:`cached_teacher_logits`."""

    def to_teacher(ids: list[int]) -> list[int]:
        return ids if teacher_input_ids is None else teacher_input_ids[ids].tolist()

    pad = to_teacher([data.pad_token_id])[0]

    def compute(indices: np.ndarray) -> torch.Tensor:
        rows = TokenizedSet([to_teacher(data.input_ids[i]) for i in indices], data.labels[indices], pad)
        return predict_tokenized(teacher, rows, batch_size=batch_size, autocast_dtype=autocast_dtype, progress=True)

    return compute


def teacher_logits_file(teacher_dir: Path, max_length: int, autocast_dtype: torch.dtype | None,
                        cache_dir: str | Path | None = None) -> Path:
    """The teacher-logit cache of this teacher, ``max_length`` and teacher precision
    under ``cache_dir`` (default :func:`models.paths.cache_root`): logits computed
    under bf16 autocast and in fp32 differ, so they never share a file."""
    root = Path(cache_dir) if cache_dir else cache_root()
    precision = str(autocast_dtype).removeprefix("torch.") if autocast_dtype is not None else "float32"
    return root / "teacher-logits" / f"{model_fingerprint(Path(teacher_dir), max_length)}-{precision}.safetensors"


def _read_cache(cache_file: Path) -> tuple[np.ndarray, torch.Tensor | None]:
    """``(keys (M,), logits (M, C))`` stored in ``cache_file``; ``(empty, None)`` if there is none."""
    if not cache_file.is_file():
        return np.empty(0, dtype=np.int64), None
    stored = load_file(str(cache_file))
    return stored["keys"].numpy(), stored["logits"]


def _write_cache(cache_file: Path, keys: np.ndarray, logits: torch.Tensor) -> None:
    """Replace ``cache_file`` atomically: written under a name of its own, then renamed,
    so a reader sees the old file or the new one, never half of one."""
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{cache_file.name}.", suffix=".tmp", dir=cache_file.parent)
    os.close(handle)
    try:
        save_file({"keys": torch.from_numpy(keys), "logits": logits.contiguous()}, tmp)
        os.replace(tmp, cache_file)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def _locked(cache_file: Path):
    """Hold an exclusive lock on ``<cache_file>.lock`` (POSIX ``flock``, released
    if the process dies). The lock file stays: removing it would let a waiting
    process lock a file that a third one no longer sees."""
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    with open(cache_file.with_name(cache_file.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _missing(keys: np.ndarray, cached_keys: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of each key of ``keys`` absent from ``cached_keys``."""
    present, first = set(cached_keys.tolist()), {}
    for i, k in enumerate(keys.tolist()):
        if k not in present:
            first.setdefault(k, i)
    return np.array(list(first.values()), dtype=np.int64)


def cached_teacher_logits(urls: list[str], cache_file: Path, compute, *, log=print) -> torch.Tensor:
    """Teacher logits ``(N, C)`` float32 for ``urls``, from ``cache_file`` where
    present; ``compute(indices)`` (e.g. :func:`teacher_scorer`) gives the rows of
    the missing ones, which are added to the file. It is not called at all when
    every URL is cached, so a caller can load its teacher inside it, lazily.

    The file holds ``keys`` ``(M,)`` int64 (each once) and ``logits`` ``(M, C)``;
    rows are looked up by key, so one file serves every run, split order and
    subset that uses the same teacher.

    Safe to call concurrently on one file. Processes that find rows missing
    take turns under a lock file (read, compute what is still missing, write a
    temporary file, rename it into place), so parallel ``kd.ablation --shard``
    workers neither lose each other's rows nor compute a row twice. Under
    ``torchrun`` (a default process group is initialised) rank 0 goes first and
    the other ranks wait for it (up to :data:`CACHE_WAIT_SETTING` minutes, then a
    :class:`kd.errors.UsageError` naming it), then read what it wrote.
    """
    with main_rank_first(cache_wait_timeout(), f"fill the teacher-logit cache {cache_file}", CACHE_WAIT_SETTING):
        return _cached_teacher_logits(urls, cache_file, compute, log)


def _cached_teacher_logits(urls: list[str], cache_file: Path, compute, log) -> torch.Tensor:
    keys = example_keys(urls)
    cached_keys, cached_logits = _read_cache(cache_file)
    if len(_missing(keys, cached_keys)):
        with _locked(cache_file):
            cached_keys, cached_logits = _read_cache(cache_file)  # another process may have added rows meanwhile
            missing = _missing(keys, cached_keys)
            if len(missing):
                log(f"teacher logits: computing {len(missing)} of {len(keys)} examples (cache: {cache_file})")
                fresh = compute(missing)
                cached_keys = np.concatenate([cached_keys, keys[missing]])
                cached_logits = fresh if cached_logits is None else torch.cat([cached_logits, fresh])
                _write_cache(cache_file, cached_keys, cached_logits)
    else:
        log(f"teacher logits: all {len(keys)} examples from {cache_file}")
    row_of = {k: i for i, k in enumerate(cached_keys.tolist())}
    rows = torch.tensor([row_of[k] for k in keys.tolist()], dtype=torch.long)
    return cached_logits[rows].contiguous()


class RowTable:
    """A fixed ``(N, ...)`` tensor whose rows are gathered on the device of the
    index: it is copied to a device once, not moved per step.

    ``RowTable(logits).rows(batch["index"])`` -> ``logits[index]`` on ``index.device``.
    """

    def __init__(self, table: torch.Tensor):
        self.table = table
        self._copies: dict[torch.device, torch.Tensor] = {}

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        copy = self._copies.get(index.device)
        if copy is None:
            copy = self._copies[index.device] = self.table.to(index.device)
        return copy[index]
