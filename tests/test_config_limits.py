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
    with pytest.raises(UsageError, match="bomb.yaml is not a plain YAML config"):
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
