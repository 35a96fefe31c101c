"""kd.bench in --quick mode on a tiny random BERT: every section runs and reports its fields."""
import json

import pytest

from kd import bench

RATES = {"samples_per_s", "real_tokens_per_s", "padding_fraction", "model_tflops", "mfu", "peak_memory_mib", "seconds"}


def test_quick_run_writes_every_field(tmp_path, tiny_bert_dir):
    out = tmp_path / "bench.json"
    bench.main(["--quick", "--model", str(tiny_bert_dir), "--student-layers", "1", "--synthetic",
                "--precisions", "fp32,dynamic-int8", "--profile", "--out", str(out)])
    results = json.loads(out.read_text())
    assert {"device", "torch", "transformers", "git_commit"} <= set(results["env"])
    assert results["ceiling"]["tflops"] > 0 and results["data"]["source"] == "synthetic"
    assert set(results["training"]) == {"hf_trainer", *bench.TRAINING_SECTIONS}
    assert set(results["inference"]) == {f"{r}/{p}" for r in ("teacher", "student") for p in ("fp32", "dynamic-int8")}
    for name, section in {**results["training"], **results["inference"]}.items():
        assert RATES <= set(section), f"{name}: {section}"
        assert section["samples_per_s"] > 0 and 0 <= section["padding_fraction"] < 1, name
    trainer, teacher = results["training"]["hf_trainer"], results["training"]["loop_teacher"]
    assert trainer["padding_fraction"] > teacher["padding_fraction"]  # padded to max_length vs per batch
    for name in ("distill_cached", "distill_live"):
        assert results["training"][name]["step_time_vs_student"] > 0
    assert results["inference"]["student/fp32"]["latency_ms_batch_1"] > 0
    assert set(results["profiles"]) == set(bench.TRAINING_SECTIONS)
    assert "aten::" in results["profiles"]["loop_teacher"]
    report = out.with_suffix(".md").read_text()
    assert "| loop_teacher |" in report and "## Profile: distill_live" in report


def test_an_unsupported_precision_is_skipped_not_fatal(tmp_path, tiny_bert_dir):
    results = bench.main(["--quick", "--model", str(tiny_bert_dir), "--student-layers", "1", "--synthetic",
                          "--precisions", "fp8"])
    assert "unknown precision" in results["inference"]["student/fp8"]["skipped"]


def test_help_explains_the_options(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--help"])
    text = capsys.readouterr().out
    assert "--quick" in text and "--profile" in text and "MFU" in text
