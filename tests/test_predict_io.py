"""kd.predict's input and output under faults and hostile content (issues 22 and 23):
a full or read-only disk, formula-like URLs, odd input files, and collectives on the
device a process group serves. The table in tests/README.md lists each case."""
from __future__ import annotations

import codecs
import errno
import gzip
import os
import stat
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import kd.predict
from kd.errors import run_cli
from kd.train.distributed import DistInfo, all_reduce_sum, collective_device


def predict(model_dir, *args) -> int:
    return run_cli(kd.predict.main, ["--model", str(model_dir), *map(str, args)], prog="python -m kd.predict")


def error_line(err: str) -> str:
    """The one error line of stderr, after the threshold note; no traceback."""
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    return line


def fake_scores(monkeypatch) -> None:
    """Score every URL 0.25 without a model (``score_file(None, None, ...)``)."""
    monkeypatch.setattr(kd.predict, "predict_proba", lambda model, tok, urls, **kw: np.full(len(urls), 0.25))


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# issue 22 item 7, issue 22: a full disk replaces every output or none, and says so on one line

def test_a_full_disk_while_the_rejects_are_written_out_replaces_neither_output(tiny_classifier_dir, tmp_path,
                                                                               monkeypatch, capsys):
    """ENOSPC at the last flush of the rejects (the scores' temporary already complete)."""
    source, output, rejects = tmp_path / "u.txt", tmp_path / "s.csv", tmp_path / "r.csv"
    source.write_text("example.org\n\nexample.com\n")
    output.write_text("previous scores\n")
    rejects.write_text("previous rejects\n")
    open_temp = kd.predict._open_temp

    def open_temp_on_a_full_disk(path):
        handle = open_temp(path)
        if path.name == "r.csv":
            close = handle.close

            def close_on_a_full_disk():
                close()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            handle.close = close_on_a_full_disk
        return handle

    monkeypatch.setattr(kd.predict, "_open_temp", open_temp_on_a_full_disk)
    assert predict(tiny_classifier_dir, "--input", source, "--output", output, "--rejects", rejects) == 1
    assert error_line(capsys.readouterr().err).startswith("python -m kd.predict: error: No space left on device")
    assert output.read_text() == "previous scores\n" and rejects.read_text() == "previous rejects\n"
    assert leftovers(tmp_path) == []


def test_a_read_only_output_folder_is_one_line_and_status_1(tiny_classifier_dir, tmp_path, monkeypatch, capsys):
    """EROFS when the first temporary is created (a chmod would not stop root, who runs CI here)."""
    source = tmp_path / "u.txt"
    source.write_text("example.org\n")

    def read_only(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path.parent))

    monkeypatch.setattr(kd.predict, "_open_temp", read_only)
    assert predict(tiny_classifier_dir, "--input", source, "--output", tmp_path / "s.csv") == 1
    line = error_line(capsys.readouterr().err)
    assert line.startswith("python -m kd.predict: error: Read-only file system") and str(tmp_path) in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.txt"]


# issue 23 item 5: the outputs get the mode of any new file

def test_outputs_get_the_mode_a_new_file_gets_under_the_umask(tmp_path, monkeypatch):
    fake_scores(monkeypatch)
    source = tmp_path / "u.txt"
    source.write_text("example.org\n\n")
    old = os.umask(0o027)
    try:
        kd.predict.score_file(None, None, source, tmp_path / "s.csv", tmp_path / "r.csv")
    finally:
        os.umask(old)
    for name in ("s.csv", "r.csv"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name


# issue 23 item 1: collectives take the device their group serves, and the counts are summed before renaming

def one_rank_group(tmp_path, backend: str) -> None:
    dist.init_process_group(backend, init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)


def test_a_group_that_serves_cuda_only_takes_cuda_tensors(tmp_path):
    """NCCL, or gloo registered for ``cuda`` alone: a CPU tensor is refused there."""
    one_rank_group(tmp_path, "cuda:gloo")
    try:
        assert collective_device().type == "cuda"
        with pytest.raises(RuntimeError, match="device type cpu"):
            dist.all_reduce(torch.zeros(1))
    finally:
        dist.destroy_process_group()


def test_a_gloo_group_sums_on_the_cpu_and_gives_the_sum_back_where_it_was(tmp_path):
    one_rank_group(tmp_path, "gloo")
    try:
        assert collective_device() == torch.device("cpu")
        total = all_reduce_sum(torch.tensor([1, 2]), DistInfo(0, 2))  # one rank: the sum is the value
        assert total.tolist() == [1, 2] and total.device.type == "cpu"
    finally:
        dist.destroy_process_group()


def refusing_rank(rank: int, store: str, folder: str) -> None:
    """A rank of a gloo group whose sum of the counts fails as NCCL's did on a CPU tensor."""
    from pathlib import Path

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    try:
        kd.predict.predict_proba = lambda model, tok, urls, **kw: np.full(len(urls), 0.25)

        def refused(value, info):
            dist.barrier()  # the other rank has reached it too
            raise RuntimeError("No backend type associated with device type cpu")

        kd.predict.all_reduce_sum = refused
        folder = Path(folder)
        try:
            kd.predict.score_file(None, None, folder / "u.txt", folder / "s.csv", folder / "r.csv",
                                  chunk_rows=2, shard=DistInfo(rank, 2, rank))
        except RuntimeError:
            (folder / f"failed-{rank}").touch()
    finally:
        dist.destroy_process_group()


def test_the_counts_are_summed_before_the_outputs_are_renamed_into_place(tmp_path):
    """A failing collective (NCCL given CPU tensors) leaves no output and no part behind."""
    (tmp_path / "u.txt").write_text("".join(f"site{i}.example.com\n" for i in range(9)))
    mp.spawn(refusing_rank, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "store") == ["failed-0", "failed-1", "u.txt"]


# issue 22 item 9: a URL that a spreadsheet would run as a formula is written as text

FORMULAS = ["=cmd|' /C calc'!A0", "+HYPERLINK(\"http://evil.example\",\"x\")", "-2+3+cmd|' /C calc'!A0",
            "@SUM(1+1)*cmd|' /C calc'!A0", "'=quoted.example"]


def test_formula_like_fields_get_a_quote_in_front_and_come_back_without_it(tmp_path, monkeypatch):
    from conftest import read_csv_rows

    fake_scores(monkeypatch)
    source = tmp_path / "u.txt"
    source.write_text("\n".join([*FORMULAS, "=" + "x" * 50, "example.org"]) + "\n")
    kd.predict.score_file(None, None, source, tmp_path / "s.csv", tmp_path / "r.csv", max_chars=45)
    scores, rejects = read_csv_rows(tmp_path / "s.csv"), read_csv_rows(tmp_path / "r.csv")
    cells = [r[k] for r in scores for k in ("url", "normalized_url")] + [r["content"] for r in rejects]
    assert rejects and all(not c.startswith(("=", "+", "-", "@", "\t", "\r")) for c in cells)
    assert [r["url"][1:] if r["url"].startswith("'") else r["url"] for r in scores] == [*FORMULAS, "example.org"]
    assert rejects[0]["content"] == "'=" + "x" * 50


# issue 22: bidi controls and zero-width characters are control characters, for training and scoring alike

INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e",
             "\u2066", "\u2067", "\u2068", "\u2069", "\ufeff", "\u061c"]


@pytest.mark.parametrize("mark", INVISIBLE, ids=[f"U+{ord(m):04X}" for m in INVISIBLE])
def test_an_invisible_mark_in_a_url_is_a_control_character_for_both_readers(tmp_path, mark):
    from kd.data.sources import SourceSpec, read_source

    url = f"paypal.com{mark}.evil.example/login"
    assert kd.predict.screen_url(url) == (None, "contains control characters")
    source = tmp_path / "u.txt"
    source.write_text(f"example.org\n{url}\n", encoding="utf-8")
    rows, report = read_source(SourceSpec(str(source), label="phishing"))
    assert [url for _, url, _ in rows] == ["example.org"] and report.skipped == {"control_characters": 1}


# issue 23: an output that is the input under another spelling is refused, and the input stays intact

def other_spellings(tmp_path, monkeypatch, case: str) -> tuple[str, str]:
    """``(input, output)`` naming the same file ``tmp_path/u.txt``."""
    if case == "relative input, absolute output":
        monkeypatch.chdir(tmp_path)
        return "u.txt", str(tmp_path / "u.txt")
    if case == "a symlink":
        (tmp_path / "link.csv").symlink_to(tmp_path / "u.txt")
        return str(tmp_path / "u.txt"), str(tmp_path / "link.csv")
    (tmp_path / "x").mkdir()
    return str(tmp_path / "u.txt"), str(tmp_path / "x" / ".." / "u.txt")


@pytest.mark.parametrize("case", ["relative input, absolute output", "a symlink", "x/../u.txt"])
def test_the_input_under_another_spelling_is_refused_as_the_output(tiny_classifier_dir, tmp_path, monkeypatch,
                                                                  capsys, case):
    (tmp_path / "u.txt").write_text("example.org\n")
    source, output = other_spellings(tmp_path, monkeypatch, case)
    assert predict(tiny_classifier_dir, "--input", source, "--output", output, "--rejects", tmp_path / "r.csv") == 2
    assert "--input and --output are the same file" in error_line(capsys.readouterr().err)
    assert (tmp_path / "u.txt").read_text() == "example.org\n" and not (tmp_path / "r.csv").exists()


# issue 22: an input that is no regular file says what it is; gzip and UTF-16 are read, not rejected line by line

URLS = "url\nexample.org\nhttp://paypal.com.verify.example/login\n\nexample.com/a?b=c\n"


def test_an_input_that_is_no_file_says_what_it_is(tiny_classifier_dir, tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "folder").mkdir()
    cases = {"folder": "is a folder, not a file", "pipe": "is a named pipe (FIFO), not a file",
             "missing.txt": "no such input file"}
    for name, words in cases.items():
        assert predict(tiny_classifier_dir, "--input", tmp_path / name, "--output", tmp_path / "s.csv") == 2, name
        assert words in error_line(capsys.readouterr().err), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "pipe"]


def test_standard_input_is_scored_as_the_same_file_would_be(tiny_classifier_dir, tmp_path, monkeypatch, capsys):
    import io
    import sys
    from types import SimpleNamespace

    source = tmp_path / "u.txt"
    source.write_text(URLS)
    assert predict(tiny_classifier_dir, "--input", source, "--output", tmp_path / "f.csv") == 0
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BytesIO(URLS.encode())))
    assert predict(tiny_classifier_dir, "--input", "-", "--output", tmp_path / "s.csv") == 0
    for name in ("csv", "rejects.csv"):
        assert (tmp_path / f"s.{name}").read_bytes() == (tmp_path / f"f.{name}").read_bytes()
    assert leftovers(tmp_path) == []  # the copy of standard input is removed
    with pytest.raises(SystemExit):  # argparse's own error: where would the scores go?
        kd.predict.main(["--model", str(tiny_classifier_dir), "--input", "-"])
    assert "--input needs --output" in capsys.readouterr().err


@pytest.mark.parametrize("encode", [
    lambda text: gzip.compress(text.encode("utf-8")),
    lambda text: text.encode("utf-16"),  # with a byte-order mark (little-endian here)
    lambda text: codecs.BOM_UTF16_BE + text.encode("utf-16-be"),
    lambda text: gzip.compress(text.encode("utf-16")),
], ids=["gzip", "utf-16", "utf-16-be", "gzip+utf-16"])
def test_gzip_and_utf16_inputs_are_scored_as_their_utf8_text_would_be(tmp_path, monkeypatch, encode):
    fake_scores(monkeypatch)
    plain, encoded = tmp_path / "plain.csv", tmp_path / "encoded.csv"
    plain.write_text(URLS)
    encoded.write_bytes(encode(URLS))
    for name, source in (("p", plain), ("e", encoded)):
        counts = kd.predict.score_file(None, None, source, tmp_path / f"{name}.scores", tmp_path / f"{name}.rejects")
        assert (counts.scored, counts.rejected) == (3, 1)
    for suffix in ("scores", "rejects"):
        assert (tmp_path / f"e.{suffix}").read_bytes() == (tmp_path / f"p.{suffix}").read_bytes()


@pytest.mark.parametrize("content, words", [
    ("example.org\nexample.com\n".encode("utf-16-le"), "UTF-16 without a byte-order mark"),
    (b"\x1f\x8b\x08this is no gzip stream\n", "does not decompress"),
], ids=["utf-16 without bom", "broken gzip"])
def test_an_undecodable_input_is_refused_as_a_whole(tiny_classifier_dir, tmp_path, capsys, content, words):
    source = tmp_path / "u.txt"
    source.write_bytes(content)
    assert predict(tiny_classifier_dir, "--input", source, "--output", tmp_path / "s.csv") == 2
    assert words in error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.txt"]


def test_a_gzip_file_cut_short_is_one_line_and_status_1(tiny_classifier_dir, tmp_path, capsys):
    """Its first lines decompress (the format is found); the end is missing."""
    text = "".join(f"site{i}.example/{i * 7919 % 100003}\n" for i in range(20000))
    compressed = gzip.compress(text.encode())
    source = tmp_path / "u.txt.gz"
    source.write_bytes(compressed[: len(compressed) // 2])
    assert predict(tiny_classifier_dir, "--input", source, "--output", tmp_path / "s.csv") == 1
    assert "neither was written or replaced" in error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.txt.gz"]
