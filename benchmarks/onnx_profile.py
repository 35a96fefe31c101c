"""Why ONNX Runtime int8 trails torch bf16 at batch 256 on this CPU: throughput and a per-operator profile.

Scores the 3-layer student of ``benchmarks/cpu_scoring.py`` (same shape, same
URLs, speed does not depend on the weights) at batch 256, end to end, as
torch fp32 and bf16 (the fused forward kd.predict uses) and as the ONNX export
of ``kd.export`` in fp32 and int8; then the same two exports after ONNX
Runtime's transformer fusions (``onnxruntime.transformers.optimizer``: bias +
GELU, residual + LayerNorm; its attention fusion finds no pattern in the
dynamo exporter's graph). Each ONNX Runtime variant is then run once more
with ``enable_profiling`` and its time summed per operator type; torch bf16
is profiled with ``torch.profiler`` (self CPU time per operator).

    python benchmarks/onnx_profile.py --out benchmarks/onnx-profile.json
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cpu_scoring import build_student, load_variant, save_results  # noqa: E402
from kd.bench import BenchConfig, benchmark_urls  # noqa: E402
from kd.eval.inference import predict_logits  # noqa: E402
from kd.eval.measure import measure_throughput  # noqa: E402
from kd.eval.report import markdown_table  # noqa: E402
from kd.export import export_folder  # noqa: E402
from kd.train.runinfo import device_description, library_versions  # noqa: E402
from models.onnx import ONNX_FILE, load_onnx_classifier, quantize_int8  # noqa: E402


def fused_copy(export: Path, out: Path, int8: bool) -> Path:
    """``export`` with ONNX Runtime's BERT fusions applied to its fp32 graph (then int8-quantized if asked)."""
    from onnxruntime.transformers.optimizer import optimize_model

    shutil.copytree(export, out)  # a new folder: copytree refuses an existing one
    config = json.loads((export / "config.json").read_text())
    fused = optimize_model(str(export / ONNX_FILE), model_type="bert", num_heads=config["num_attention_heads"],
                           hidden_size=config["hidden_size"], opt_level=1)
    if not int8:
        fused.save_model_to_file(str(out / ONNX_FILE))
        return out
    fused.save_model_to_file(str(out / "fused.onnx"))
    quantize_int8(out / "fused.onnx", out / ONNX_FILE)
    (out / "fused.onnx").unlink()  # written just above, in the folder this call created
    record = json.loads((out / "onnx_export.json").read_text())
    (out / "onnx_export.json").write_text(json.dumps({**record, "precision": "int8"}))
    return out


def ort_profile(folder: Path, urls: list[str], threads: int) -> Counter:
    """Milliseconds per ONNX Runtime operator type over one pass of ``urls`` at batch 256."""
    import onnxruntime

    model, tokenizer = load_onnx_classifier(folder, threads=threads)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / "profile")
    model.session = onnxruntime.InferenceSession(str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"])
    predict_logits(model, tokenizer, urls, batch_size=256)
    trace = json.loads(Path(model.session.end_profiling()).read_text())
    times = Counter()
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            times[event["args"]["op_name"]] += event["dur"] / 1000
    return times


def torch_profile(folder: Path, urls: list[str]) -> Counter:
    """Self CPU milliseconds per torch operator over one pass of ``urls`` at batch 256 (bf16 variant)."""
    model, tokenizer, amp = load_variant(folder, "bf16")
    predict_logits(model, tokenizer, urls[:256], autocast_dtype=amp)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        predict_logits(model, tokenizer, urls, batch_size=256, autocast_dtype=amp)
    return Counter({e.key: e.self_cpu_time_total / 1000 for e in prof.key_averages()})


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--urls", type=int, default=2048, help="Hannousse URLs scored at batch 256 (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="throughput measurements, the median kept (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="results JSON (+ .md beside it)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    examples, source = benchmark_urls(BenchConfig(), args.urls)
    urls = list(examples.urls)
    results = {"env": {"device": device_description(), **library_versions(),
                       "date": datetime.now(timezone.utc).isoformat(timespec="seconds")},
               "data": source, "urls": len(urls), "threads": args.threads, "urls_per_s": {}, "profiles_ms": {}}
    with tempfile.TemporaryDirectory(prefix="kd-onnx-profile-") as tmp:
        student = build_student(Path(tmp) / "student", urls)
        exports = {"ONNX Runtime fp32": export_folder(student, Path(tmp) / "fp32"),
                   "ONNX Runtime int8": export_folder(student, Path(tmp) / "int8", int8=True)}
        exports["ONNX Runtime fp32 + fusions"] = fused_copy(exports["ONNX Runtime fp32"], Path(tmp) / "fused-fp32", False)
        exports["ONNX Runtime int8 + fusions"] = fused_copy(exports["ONNX Runtime fp32"], Path(tmp) / "fused-int8", True)
        scorers = {name: (*load_variant(student, name), ) for name in ("fp32", "bf16")}
        for name, folder in exports.items():
            scorers[name] = (*load_onnx_classifier(folder, threads=args.threads), None)
        for name, (model, tokenizer, amp) in scorers.items():
            predict_logits(model, tokenizer, urls[:256], autocast_dtype=amp)  # warm-up
            rounds = [measure_throughput(model, tokenizer, urls, batch_size=256, autocast_dtype=amp) for _ in range(args.rounds)]
            results["urls_per_s"][name] = statistics.median(rounds)
            print(f"{name}: {results['urls_per_s'][name]:,.0f} URL/s at batch 256", flush=True)
        for name, folder in exports.items():
            results["profiles_ms"][name] = dict(ort_profile(folder, urls, args.threads).most_common())
        results["profiles_ms"]["torch bf16"] = dict(torch_profile(student, urls).most_common())
    speed = markdown_table(("variant", "URL/s at batch 256"),
                           [[name, f"{v:,.0f}"] for name, v in results["urls_per_s"].items()], right=[False, True])
    profiles = []
    for name, times in results["profiles_ms"].items():
        total = sum(times.values())
        top = ", ".join(f"{op} {ms / total:.0%}" for op, ms in list(times.items())[:6])
        profiles.append([name, f"{total:,.0f}", top])
    profile = markdown_table(("variant", "operator ms (one pass)", "largest shares"), profiles, right=[False, True, False])
    print(speed + "\n\n" + profile)
    if args.out:
        save_results(args.out, results, "ONNX Runtime against torch at batch 256: throughput and profile",
                     f"{args.threads} threads; {len(urls)} URLs of {source}", f"{speed}\n\n{profile}")
    return results


if __name__ == "__main__":
    main()
