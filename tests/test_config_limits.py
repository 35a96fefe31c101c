"""Configs and data specs that cannot hang or mislead (issues 22 and 23): every
YAML the project reads goes through one loader without aliases or custom tags;
absurd values stop at config time with one line naming the key."""
import json
import math
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, make_url_rows, write_csv

from kd.errors import UsageError, run_cli
from kd.train.config import ModelConfig, RunConfig, load_config, read_yaml, save_config

ALIAS_BOMB = "data:\n  test_sets:\n    a0: &a0 [x.csv, x.csv]\n" + "".join(
    f"    a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]\n"
    for i in range(1, 10)
)


@pytest.mark.parametrize("text", [ALIAS_BOMB, "a: &x 1\n", "a: 1\nb: *x\n"])
def test_read_yaml_refuses_anchors_and_aliases(text):
    with pytest.raises(UsageError, match="anchors and aliases"):
        read_yaml(text, "bomb.yaml")


def test_read_yaml_refuses_a_python_tag():
    with pytest.raises(UsageError, match="^bomb.yaml, line 1, column 4: could not determine a constructor for the tag"):
        read_yaml("a: !!python/object/apply:os.system ['true']\n", "bomb.yaml")


@pytest.mark.parametrize("text,message", [
    (ALIAS_BOMB, "anchors and aliases"),
    ("data:\n  seed: !!python/object/apply:os.getpid []\n", "could not determine a constructor"),
])
def test_a_hostile_preset_is_one_line_and_status_2_as_a_process(tmp_path, text, message):
    preset = tmp_path / "hostile.yaml"
    preset.write_text(text)
    command = [sys.executable, "train_teacher.py", "--config", str(preset), "--set", f"out_dir={tmp_path / 'out'}"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("train_teacher.py: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr and not (tmp_path / "out").exists()


def test_ablation_grids_and_resumed_config_files_use_the_same_loader(tmp_path, monkeypatch, capsys):
    from kd import ablation
    from kd.train.runinfo import resume_changes

    grid = tmp_path / "grid.yaml"
    grid.write_text(ALIAS_BOMB.replace("data:", "grid:"))
    assert run_cli(ablation.main, [str(grid)], prog="kd.ablation") == 2
    assert "anchors and aliases" in capsys.readouterr().err
    run = tmp_path / "run"
    (run / "last" / "trainer_state").mkdir(parents=True)
    (run / "last" / "trainer_state" / "state.json").write_text("{}")
    (run / "data_report.json").write_text("{}")
    (run / "config.yaml").write_text(ALIAS_BOMB)
    with pytest.raises(UsageError, match="anchors and aliases"):
        resume_changes(run, {}, RunConfig().data)


def test_a_saved_config_with_a_shared_value_reads_back(tmp_path):
    """save_config writes a value held twice out twice, never as an alias."""
    cfg = RunConfig()
    cfg.data.test_sets = {"a": cfg.data.sources, "b": cfg.data.sources}
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(RunConfig, tmp_path / "config.yaml").data.test_sets == {"a": cfg.data.sources, "b": cfg.data.sources}


@pytest.mark.parametrize("override,message", [
    ("train.epochs=inf", "train.epochs must be int, got 'inf'"),
    ("train.epochs=.inf", "train.epochs must be int, got inf"),
    ("train.seed=-1", "train.seed must be in [0, 2**32)"),
    ("data.seed=-1", "data.seed must be in [0, 2**32)"),
    ("data.fractions=[.nan,0.5,0.5]", "data.fractions must be finite"),
    ("data.fractions=[0.8,0.1,.nan]", "data.fractions must be finite"),
    ("data.fractions=[0.9,0.2,-0.1]", "data.fractions must be 3 non-negative numbers summing to 1"),
    ("data.fractions=[0.5,0.3,0.1]", "data.fractions must be 3 non-negative numbers summing to 1"),
    ("model.max_length=0", "model.max_length must be >= 1, got 0"),
    ("model.dropout=1", "model.dropout must be in [0, 1)"),
    ("model.dropout=-0.1", "model.dropout must be in [0, 1)"),
    ("model.dropout=.nan", "model.dropout must be in [0, 1)"),
])
def test_an_absurd_value_is_one_line_naming_the_key_at_config_time(override, message, tmp_path, capsys):
    import train_teacher

    argv = ["--set", override, "--set", "data.sources=[no/such/file.csv]", "--set", f"out_dir={tmp_path / 'out'}"]
    status = run_cli(train_teacher.main, argv, prog="train_teacher.py")
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()  # stopped before the data (a missing file) was read


def test_sane_model_values_pass():
    ModelConfig(max_length=1, dropout=0.0)
    ModelConfig(dropout=0.99)
    ModelConfig(dropout=None)


@pytest.mark.parametrize("split,n_rows,message", [
    ("random", 3, "3 examples after cleaning ({'legitimate': 2, 'phishing': 1}) are too few for the random split"),
    ("domain", 3, "3 examples after cleaning ({'legitimate': 2, 'phishing': 1}) are too few for the domain split"),
    ("domain", 30, "needs at least 20 of each class"),
])
def test_a_training_set_too_small_to_split_says_how_many_rows_and_how_many_are_needed(tmp_path, split, n_rows, message):
    from kd.data.sources import DataError
    from kd.data.splits import DataConfig, build_splits

    csv = write_csv(tmp_path / "urls.csv", make_url_rows(n_rows))
    with pytest.raises(DataError, match="at least 20") as raised:
        build_splits(DataConfig(sources=[str(csv)], split=split))
    assert message in str(raised.value)


def test_twenty_of_each_class_split_by_domain(tmp_path):
    from kd.data.splits import DataConfig, build_splits

    csv = write_csv(tmp_path / "urls.csv", make_url_rows(40))
    assert len(build_splits(DataConfig(sources=[str(csv)], split="domain")).train) > 0


def test_a_batch_above_the_training_split_stops_before_a_model_is_built(tmp_path, capsys, monkeypatch):
    import train_teacher
    from conftest import save_tiny_classifier

    model = save_tiny_classifier(tmp_path / "model")
    csv = write_csv(tmp_path / "urls.csv", make_url_rows(60))
    monkeypatch.setattr(train_teacher, "build_classifier", lambda *a, **k: pytest.fail("a model was built"))
    argv = ["--set", f"model.name_or_path={model}", "--set", f"data.sources=[{csv}]", "--set", "data.split=random",
            "--set", "train.batch_size=1000000000000", "--set", f"out_dir={tmp_path / 'out'}"]
    capsys.readouterr()  # the model's saving progress bar
    status = run_cli(train_teacher.main, argv, prog="train_teacher.py")
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert "train.batch_size (1000000000000) is larger than the training split (" in err
    assert not (tmp_path / "out" / "config.yaml").exists()


def test_a_student_batch_above_the_training_split_stops_before_the_student_is_built(tiny_teacher_run, capsys, monkeypatch):
    import train_student
    from conftest import student_overrides

    monkeypatch.setattr(train_student, "prepare_student", lambda *a, **k: pytest.fail("a student was built"))
    argv = [arg for item in student_overrides(tiny_teacher_run, "big-batch", "train.batch_size=100000")
            for arg in ("--set", item)]
    status = run_cli(train_student.main, argv, prog="train_student.py")
    err = capsys.readouterr().err
    assert status == 2 and "train.batch_size (100000) is larger than the training split (" in err, err


def evaluate_data_config(model_dir, *argv):
    """:func:`kd.evaluate.data_config_for` on ``model_dir`` with these data options."""
    import argparse

    from kd.evaluate import add_data_arguments, data_config_for

    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    return data_config_for(model_dir, parser.parse_args(list(argv)))


def checkpoint_with_data_spec(folder, data: dict):
    folder.mkdir()
    (folder / "run_info.json").write_text(json.dumps({"config": {"data": data}}))
    return folder


def test_evaluate_set_overrides_single_fields_of_the_checkpoints_data_spec(tmp_path, capsys):
    saved = {"sources": ["a.csv", "b.csv"], "split": "random", "seed": 3, "fractions": [0.6, 0.2, 0.2],
             "test_sets": {"other": ["c.csv"]}}
    model = checkpoint_with_data_spec(tmp_path / "best", saved)
    cfg = evaluate_data_config(model, "--set", "data.max_test_examples=10000")
    assert (cfg.sources, cfg.split, cfg.seed, cfg.fractions) == (["a.csv", "b.csv"], "random", 3, [0.6, 0.2, 0.2])
    assert cfg.test_sets == {"other": ["c.csv"]} and cfg.max_test_examples == 10000
    out = capsys.readouterr().out
    assert f"data spec ({model / 'run_info.json'} with --set data.max_test_examples=10000): " in out
    assert '"sources": ["a.csv", "b.csv"]' in out


def test_evaluate_config_and_source_replace_the_checkpoints_data_spec(tmp_path):
    model = checkpoint_with_data_spec(tmp_path / "best", {"sources": ["a.csv"], "split": "random", "seed": 3})
    preset = tmp_path / "preset.yaml"
    preset.write_text("data:\n  sources: [p.csv]\n")
    from_preset = evaluate_data_config(model, "--config", str(preset), "--set", "data.seed=5")
    assert (from_preset.sources, from_preset.split, from_preset.seed) == (["p.csv"], "domain", 5)
    from_source = evaluate_data_config(model, "--source", "s.csv")
    assert [s["path"] for s in from_source.sources] == ["s.csv"] and (from_source.split, from_source.seed) == ("random", 3)


def test_evaluate_without_a_saved_spec_needs_one_on_the_command_line(tmp_path):
    (tmp_path / "bare").mkdir()
    with pytest.raises(UsageError, match="has no run_info.json"):
        evaluate_data_config(tmp_path / "bare")
    assert evaluate_data_config(tmp_path / "bare", "--set", "data.split=random").sources == RunConfig().data.sources
