"""``python -m kd.bench --suite gpu``: the one-call GPU benchmark, run here in its CPU ``--smoke`` mode
so that it cannot rot (issue 15). No timing is asserted."""
from __future__ import annotations

import json

import pytest
import torch

from kd import bench

SECTIONS = {"hf_trainer", "loop_teacher", "loop_teacher_compile", "loop_student", "distill_cached", "distill_live", "qlora"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite") / "gpu-smoke.json"
    printed = []
    bench.main(["--suite", "gpu", "--smoke", "--synthetic", "--out", str(out)], log=printed.append)
    return json.loads(out.read_text()), out.with_suffix(".md").read_text(), printed


def test_every_section_of_the_suite_produces_a_row(smoke):
    results, _, _ = smoke
    assert set(results["training"]) == SECTIONS
    for name, row in results["training"].items():
        assert row.get("samples_per_s", 0) > 0 and row["real_tokens_per_s"] > 0 and row["peak_memory_mib"] > 0, (name, row)
    for name in ("distill_cached", "distill_live"):
        assert results["training"][name]["step_time_vs_student"] > 0
    assert results["training"]["qlora"]["lora_r"] == 16 and results["training"]["qlora"]["trainable_parameters"] > 0
    precisions = bench.SMOKE["precisions"]
    assert set(results["inference"]) == {f"{role}/{p}" for role in ("teacher", "student") for p in precisions}
    for name, row in results["inference"].items():
        assert row.get("samples_per_s", 0) > 0 and row["latency_ms_batch_1"] > 0, (name, row)


def test_the_report_names_the_card_and_the_versions_and_the_table_comes_last(smoke):
    results, report, printed = smoke
    assert {"device", "driver", "cuda", "torch", "transformers", "bitsandbytes"} <= set(results["env"])
    assert f"torch {torch.__version__}" in report and "bitsandbytes" in report and "driver" in report
    assert "| loop_teacher_compile |" in report and "| qlora |" in report
    assert printed[-2].startswith("| what |") and "| qlora |" in printed[-2]  # the table, then where it was written


def test_the_gpu_suite_is_bert_base_a_six_layer_student_and_a_360m_llama():
    from transformers import AutoConfig, AutoModelForCausalLM

    from models.encoder import build_classifier
    from models.gguf import resolve_causal_lm

    suite = bench.SUITES["gpu"]
    causal_folder = resolve_causal_lm(suite["causal_model"])  # dequantized on a cold cache: not on meta
    with torch.device("meta"):
        teacher = build_classifier("packaged:minilm", pretrained=False, shape=suite["teacher_shape"])
        config = AutoConfig.from_pretrained(causal_folder)
        config.update(suite["qlora_shape"])
        llama = AutoModelForCausalLM.from_config(config)
    assert 109e6 < sum(p.numel() for p in teacher.parameters()) < 110e6  # bert-base-uncased: 109.5 M
    assert 355e6 < sum(p.numel() for p in llama.parameters()) < 365e6  # SmolLM2-360M: 361.8 M
    assert suite["student_layers"] == 6 and suite["infer_batch_size"] == 512 and suite["lora_r"] == 16
    assert {"fp32", "bf16", "nf4"} <= set(suite["precisions"]) and suite["compile_backend"] == "inductor"


def test_smoke_without_a_suite_is_a_usage_error():
    with pytest.raises(bench.UsageError, match="--suite"):
        bench.parse_args(["--smoke"])


def test_prepare_pins_bitsandbytes_and_checks_the_carried_size():
    """The device image needs the CUDA 13.0 library of bitsandbytes 0.50.2 (the release the CPU suite
    passes with), and the device tool carries at most 64 MiB: ``prepare`` pins one and checks the other."""
    from pathlib import Path

    script = (Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.sh").read_text()
    prepare = script[script.index("prepare)"):script.index("run)")]
    assert "bitsandbytes==0.50.2 " in prepare
    assert "du -sk $ASSETS" in prepare and "-gt $((64 * 1024))" in prepare and "exit 1" in prepare
