"""benchmarks/qlora_report.py: the counts that explain the QLoRA student's test
errors, and the comparison table, on hand-made numbers (the script's model
work runs on a real run folder; see benchmarks/qlora-smollm2-cpu.md)."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from qlora_report import comparison_table, error_analysis  # noqa: E402


def test_error_analysis_counts_each_kind_of_error_against_the_teacher():
    labels = np.array([0, 0, 1, 1, 1, 0])
    p_student = np.array([0.95, 0.10, 0.05, 0.45, 0.90, 0.55])  # threshold 0.5: wrong at 0, 2, 3, 5
    mass = np.array([1e-3, 0.5, 1e-4, 0.2, 0.6, 0.3])
    p_teacher = np.array([0.80, 0.10, 0.90, 0.20, 0.90, 0.10])  # threshold 0.5: wrong at 0, 3
    counts = error_analysis(labels, p_student, mass, 0.5, p_teacher, 0.5)
    assert (counts["errors"], counts["false_positives"], counts["false_negatives"]) == (4, 2, 2)
    assert counts["errors_also_teacher_errors"] == 2  # rows 0 and 3
    assert counts["teacher_errors"] == 2 and counts["teacher_errors_student_right"] == 0
    assert counts["errors_with_p_phishing_above_0.9_or_below_0.1"] == 2  # rows 0 and 2
    assert counts["errors_within_0.1_of_threshold"] == 2  # rows 3 and 5
    assert counts["median_p_phishing_false_negatives"] == pytest.approx(0.25)
    assert counts["median_teacher_p_phishing_on_student_false_negatives"] == pytest.approx(0.55)
    assert counts["median_verbalizer_mass_errors"] == pytest.approx(np.median([1e-3, 1e-4, 0.2, 0.3]))
    assert counts["median_verbalizer_mass_correct"] == pytest.approx(0.55)
    assert counts["min_verbalizer_mass"] == pytest.approx(1e-4)


def test_comparison_table_sizes_and_f1_are_relative_to_the_fp32_teacher():
    sets = {"iscx-benign+phishtank": {"f1": 0.6, "roc_auc": 0.9}}
    teacher = {"role": "teacher", "precision": "fp32", "parameters": 22.7e6, "memory_bytes": 100e6, "f1": 0.96,
               "roc_auc": 0.99, "tpr_at_1pct_fpr": 0.9, "sets": sets, "latency_ms_batch1": 10.0,
               "throughput_urls_per_s_batch256": 100.0}
    student = dict(teacher, role="SmolLM2 QLoRA student", precision="nf4 + LoRA", memory_bytes=200e6, f1=0.48,
                   training_minutes=30.0)
    table = comparison_table([teacher, student], teacher).splitlines()
    assert len(table) == 4
    assert "| -100.0 | 0.4800 | 50.0 |" in table[3]  # twice the teacher's memory, half its F1
    assert table[2].endswith("| - |") and table[3].endswith("| 30.0 |")
