"""Every command-line tool reports a configuration or usage error as one line
on stderr with exit status 2, before it reads data or loads a model; --debug
shows the traceback (issue 12)."""
import math
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from kd.errors import RecipeFailed, UsageError, run_cli
from kd.train.loop import TrainConfig
from losses import parse_spec


def cli_mains():
    import quantize
    import train_student
    import train_teacher
    from kd import ablation, bench, demo, evaluate, export, merge_adapters, predict, upgrade

    return {
        "train_teacher.py": (train_teacher.main, ["--set", "train.metric=f11"], "train.metric must be one of"),
        "train_student.py": (train_student.main, ["--set", "distill.objective=ce:0.5,fkl:0.5@T=inf"], "T must be > 0 and finite"),
        "train_student.py --generative max_steps": (train_student.main, ["--generative", "--set", "train.max_steps=-1"],
                                                    "train.max_steps must be >= 0"),
        "train_student.py --generative": (train_student.main, ["--generative", "--set", "train.log_every=0"], "train.log_every must be >= 1"),
        "kd.evaluate": (evaluate.main, ["--model", "runs/no/such/model", "--set", "train.warmup_ratio=1"], "train.warmup_ratio must be in"),
        "kd.predict": (predict.main, ["--model", "runs/no/such/model", "example.org"], "no such folder: runs/no/such/model"),
        "kd.export": (export.main, ["--model", "runs/no/such/model", "--out", "out"], "no such folder: runs/no/such/model"),
        "quantize.py": (quantize.main, ["--student", "runs/no/such/student"], "no such folder: runs/no/such/student"),
        "kd.ablation": (ablation.main, ["no-such-grid.yaml"], "no-such-grid.yaml"),
        "kd.bench": (bench.main, ["--quick", "--steps", "0"], "must be at least 1"),
        "kd.demo": (demo.main, ["--set", "train.eval_batch_size=0"], "train.eval_batch_size must be >= 1"),
        "kd.merge_adapters": (merge_adapters.main, ["runs/no/adapters", "out"], "is not an adapter folder"),
        "kd.upgrade": (upgrade.main, ["runs/no/such/model"], "is no model folder"),
    }


@pytest.mark.parametrize("name", list(cli_mains()))
def test_a_bad_config_is_one_line_and_status_2(name, capsys, tmp_path, monkeypatch):
    main, argv, message = cli_mains()[name]
    monkeypatch.chdir(tmp_path)  # nothing may be written; if it were, it would land here
    status = run_cli(main, argv, prog=name)
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith(f"{name}: error: ") and err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


def test_merge_adapters_refuses_a_merged_folder(capsys, tmp_path):
    """A merged folder has generative.json too, but no adapters to merge."""
    from kd import merge_adapters

    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "generative.json").write_text("{}")
    status = run_cli(merge_adapters.main, [str(tmp_path / "merged"), str(tmp_path / "out")], prog="kd.merge_adapters")
    assert status == 2 and "is not an adapter folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(capsys):
    import train_teacher

    with pytest.raises(UsageError, match="train.metric must be one of") as info:
        run_cli(train_teacher.main, ["--set", "train.metric=f11", "--debug"])
    assert isinstance(info.value.__cause__, ValueError)  # where the config refused it


def test_a_genuine_bug_keeps_its_traceback():
    def main(argv):
        raise ValueError("not the user's mistake")  # a ValueError outside config building

    with pytest.raises(ValueError, match="not the user's mistake"):
        run_cli(main, [])


def test_as_a_process(tmp_path):
    """The real entry point: status 2 and one line; with --debug, the traceback."""
    command = [sys.executable, "train_teacher.py", "--set", "train.max_steps=-1", "--out", str(tmp_path / "run")]
    plain = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert plain.returncode == 2 and plain.stdout == ""
    assert plain.stderr == ("train_teacher.py: error: train.max_steps must be >= 0 (0: run all epochs), got -1 "
                            "(rerun with --debug for the traceback)\n")
    debug = subprocess.run([*command, "--debug"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "UsageError" in debug.stderr
    assert not (tmp_path / "run").exists()


def test_a_failed_recipe_exits_with_its_own_status_in_one_line(capsys):
    """kd.demo and kd.ablation run recipes as processes: a crash is not the user's mistake (status 2)."""
    from kd.cli import run_recipe

    def main(argv):
        run_recipe("kd.no_such_recipe", [])

    assert run_cli(main, [], prog="kd.demo") == 1
    err = capsys.readouterr().err
    assert err.endswith("kd.demo: error: python -m kd.no_such_recipe stopped with status 1 (its error is above)\n")


def test_a_recipe_killed_by_a_signal_exits_as_a_shell_reports_it(capsys):
    def main(argv):
        raise RecipeFailed("python -m train_student", -9)

    assert run_cli(main, [], prog="kd.ablation") == 137
    assert capsys.readouterr().err == ("kd.ablation: error: python -m train_student was killed by SIGKILL; the kernel's "
                                       "out-of-memory killer sends it when memory runs out\n")


@pytest.mark.parametrize("field,value", [
    ("metric", "f11"), ("metric", "loss"), ("metric", "ece"), ("max_steps", -1), ("log_every", 0),
    ("eval_batch_size", 0), ("warmup_ratio", 1.0), ("warmup_ratio", -0.1), ("lr", 0.0), ("lr", math.nan),
    ("lr", math.inf), ("max_grad_norm", 0.0), ("max_grad_norm", math.nan), ("eval_every", -1), ("patience", -1),
    ("weight_decay", math.nan),
])
def test_train_config_refuses(field, value):
    with pytest.raises(ValueError, match=f"train.{field} must be"):
        TrainConfig(**{field: value})


def test_train_config_accepts_every_validation_metric_and_no_clipping():
    from kd.eval.metrics import SELECTION_METRICS, binary_metrics

    produced = binary_metrics([0, 1, 0, 1], [0.1, 0.8, 0.6, 0.4])
    for metric in SELECTION_METRICS:
        assert metric in produced
        TrainConfig(metric=metric)
    TrainConfig(max_grad_norm=math.inf)


@pytest.mark.parametrize("spec", ["fkl@T=inf", "rkl@T=nan", "jsd@T=-inf"])
def test_objective_temperature_must_be_finite(spec):
    with pytest.raises(ValueError, match="T must be > 0 and finite"):
        parse_spec(spec)
