"""``train.precision=auto``: bf16 autocast on CUDA and on CPUs with native bf16, fp32 on other CPUs (issue 15)."""
from __future__ import annotations

import pytest
import torch

from kd.train import loop
from kd.train.loop import autocast_dtype, cpu_has_native_bf16

CPUINFO = "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 avx512f {extra}\n\nprocessor\t: 1\n"


@pytest.mark.parametrize("extra, native", [("avx512_bf16", True), ("amx_bf16 amx_tile", True),
                                           ("avx512_vnni", False), ("", False)])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, extra, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(extra=extra))
    assert cpu_has_native_bf16(cpuinfo) is native


def test_a_system_without_cpuinfo_counts_as_without_native_bf16(tmp_path):
    assert cpu_has_native_bf16(tmp_path / "missing") is False


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, None)])
def test_auto_on_cpu_follows_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: native)
    assert autocast_dtype("auto", torch.device("cpu")) is expected


@pytest.mark.parametrize("native", [True, False])
def test_auto_on_cuda_is_bf16_and_explicit_precisions_ignore_the_cpu(monkeypatch, native):
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: native)
    assert autocast_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert autocast_dtype("fp32", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
