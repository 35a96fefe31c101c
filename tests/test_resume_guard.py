"""Run folders (issue 12): --resume refuses a changed configuration or changed
data unless --allow-changed names the keys, and a second run into a folder
that another run is writing stops at once."""
import subprocess
import sys

import pytest
from conftest import make_url_rows, write_csv

import train_teacher
from kd.train.checkpoint import LOCK_FILE, run_folder_lock
from kd.errors import UsageError, run_cli


def teacher_argv(model_dir, data_csv, out_dir, *extra):
    return ["--out", str(out_dir), "--set", f"model.name_or_path={model_dir}", "--set", f"data.sources=[{data_csv}]",
            "--set", "data.test_sets={}", "--set", "data.split=random", "--epochs", "1", "--set", "train.batch_size=16", "--set", "train.lr=1e-3",
            "--set", "train.eval_batch_size=64", *extra]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_bert_dir):
    """A tiny teacher run of one epoch (resumable from its last checkpoint)."""
    root = tmp_path_factory.mktemp("resume")
    data_csv = write_csv(root / "urls.csv", make_url_rows(80))
    train_teacher.main(teacher_argv(tiny_bert_dir, data_csv, root / "run"))
    return root, data_csv


def checkpoints(run_dir):
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def test_resume_refuses_a_changed_learning_rate(finished_run, tiny_bert_dir):
    root, data_csv = finished_run
    before = checkpoints(root / "run")
    with pytest.raises(UsageError, match=r"train.lr: 0.001 -> 0.002.*--allow-changed train.lr"):
        train_teacher.main(teacher_argv(tiny_bert_dir, data_csv, root / "run", "--resume", "--set", "train.lr=2e-3"))
    assert checkpoints(root / "run") == before


def test_resume_refuses_changed_data_files(finished_run, tiny_bert_dir, tmp_path):
    """Same config, same path, other URLs in the file: the data report's hash differs."""
    root, data_csv = finished_run
    original = data_csv.read_bytes()
    try:
        write_csv(data_csv, make_url_rows(80, seed=1))
        with pytest.raises(UsageError, match=r"data.source_hashes\[.*urls.csv\]: 'sha256 \w+' -> 'sha256 \w+'"):
            train_teacher.main(teacher_argv(tiny_bert_dir, data_csv, root / "run", "--resume"))
    finally:
        data_csv.write_bytes(original)


def test_resume_with_allowed_changes_continues(finished_run, tiny_bert_dir, capsys):
    root, data_csv = finished_run
    with pytest.raises(UsageError, match="train.epochs: 1 -> 2"):  # not allowed: only train.max_steps is
        train_teacher.main(teacher_argv(tiny_bert_dir, data_csv, root / "run", "--resume", "--epochs", "2",
                                        "--allow-changed", "train.max_steps"))
    with pytest.raises(UsageError, match="unknown config key"):
        train_teacher.main(teacher_argv(tiny_bert_dir, data_csv, root / "run", "--resume", "--epochs", "2",
                                        "--allow-changed", "train.epoch"))
    results = train_teacher.main(teacher_argv(tiny_bert_dir, data_csv, root / "run", "--resume", "--epochs", "2",
                                              "--allow-changed", "train.epochs,train.max_steps"))
    assert "with train.epochs changed: 1 -> 2" in capsys.readouterr().out
    assert results["sets"]["test"]["n"] > 0
    assert (root / "run" / "last").resolve().name > "step-000004"  # trained on past the first epoch's 4 steps


def test_resume_of_a_folder_without_a_run_says_so(tmp_path, tiny_bert_dir):
    data_csv = write_csv(tmp_path / "urls.csv", make_url_rows(40))
    with pytest.raises(UsageError, match="holds no resumable run"):
        train_teacher.main(teacher_argv(tiny_bert_dir, data_csv, tmp_path / "empty", "--resume"))


def test_a_second_run_into_a_busy_folder_stops_at_once(tmp_path, tiny_bert_dir, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
                               "print('locked', flush=True); time.sleep(120)", str(run_dir / LOCK_FILE)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        data_csv = write_csv(tmp_path / "urls.csv", make_url_rows(40))
        status = run_cli(train_teacher.main, teacher_argv(tiny_bert_dir, data_csv, run_dir, "--set", "train.max_steps=1"),
                         prog="train_teacher.py")
        err = capsys.readouterr().err
        assert status == 2 and f"run folder {run_dir} is in use" in err and err.count("\n") == 1
        assert [p.name for p in run_dir.iterdir()] == [LOCK_FILE]  # nothing else written
    finally:
        holder.kill()  # like kill -9: the lock dies with the process
        holder.wait()
    with run_folder_lock(run_dir):
        pass


def test_the_lock_is_released_when_the_run_ends_and_held_while_it_runs(tmp_path):
    with run_folder_lock(tmp_path):
        with pytest.raises(UsageError, match=f"in use by process"):
            with run_folder_lock(tmp_path):
                pass
    with run_folder_lock(tmp_path):  # released
        pass


def test_only_rank_0_takes_the_lock(tmp_path, monkeypatch):
    with run_folder_lock(tmp_path):
        monkeypatch.setenv("RANK", "1")
        with run_folder_lock(tmp_path):  # the other ranks of the same torchrun job share the folder
            pass
