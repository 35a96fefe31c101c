"""Timed reports name the CPU they ran on: the same VM can come back on another host."""
import platform

import torch

from kd.train import runinfo


def test_the_cpu_model_name_is_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B14\n\n"
                       "processor\t: 1\nmodel name\t: AMD EPYC 9B14\n")
    assert runinfo.cpu_model_name(cpuinfo) == "AMD EPYC 9B14"


def test_no_cpuinfo_or_no_model_name_gives_none(tmp_path):
    assert runinfo.cpu_model_name(tmp_path / "missing") is None
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nmodel name\t:\n")
    assert runinfo.cpu_model_name(tmp_path / "cpuinfo") is None


def test_the_cpu_description_names_the_model_and_the_threads(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runinfo, "cpu_model_name", lambda: "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz")
    description = runinfo.device_description()
    assert description.startswith("CPU (Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz, ")
    assert description.endswith(f", {torch.get_num_threads()} threads)")
    monkeypatch.setattr(runinfo, "cpu_model_name", lambda: None)
    assert runinfo.device_description() == f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
