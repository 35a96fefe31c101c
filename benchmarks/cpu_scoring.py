"""CPU scoring of the default student, end to end (normalise, tokenise, pad, forward),
in the variants issue 15 asks to try: the transformers forward in fp32 and bf16
(the baseline), the fused BERT forward that kd.predict scores with
(``models.fused_bert``, SDPA attention) in fp32, under bf16 autocast, with bf16
weights and under torch.compile (``kd.eval.inference.scoring_model(compile=True)``,
``kd.predict --compile``: inductor's weight freezing and C++ GEMM templates),
torch dynamic int8 (which keeps the transformers forward), and the ONNX export
of ``python -m kd.export`` scored by ONNX Runtime in fp32 and after its dynamic
int8 quantization (``--int8``; issue 25), with ``intra_op_num_threads`` set to
the torch thread count.

The student is the default preset's shape without training one: 3 layers taken
from the packaged MiniLM (``models.student.student_from_teacher``), vocabulary
pruned to the tokens of the Hannousse URLs (8.9 M parameters); speed does not
depend on the weights. Throughput: ``--urls`` Hannousse URLs at batch 256
through ``kd.eval.inference.predict_logits`` (length-sorted batches); latency:
median of ``--repeats`` batch-1 calls (URL lengths cycle, so each call may
meet a new shape). Each figure is the median of ``--rounds`` measurements.
MFU = 2 x N x real tokens/s over the bf16 matmul rate measured in the same run
(N = non-embedding parameters). "first calls" is the time of the first batch-1
call and the first 256-URL call, where torch.compile compiles.

    python benchmarks/cpu_scoring.py --out benchmarks/cpu-scoring.json
    python benchmarks/cpu_scoring.py --variants "bf16,ONNX Runtime int8" --urls 512 --repeats 100
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kd.bench import BenchConfig, benchmark_urls  # noqa: E402
from kd.data.batching import eval_batches, token_counts, tokenize  # noqa: E402
from kd.data.splits import Examples  # noqa: E402
from kd.data.urls import normalize_url  # noqa: E402
from kd.eval.inference import predict_logits, scoring_model  # noqa: E402
from kd.eval.measure import matmul_tflops, measure_latency, measure_throughput, parameter_count  # noqa: E402
from kd.eval.report import markdown_table  # noqa: E402
from kd.export import export_folder  # noqa: E402
from kd.train.runinfo import device_description, library_versions  # noqa: E402
from models.encoder import build_classifier, load_tokenizer  # noqa: E402
from models.quantized import load_classifier  # noqa: E402
from models.student import student_from_teacher  # noqa: E402
from models.vocabulary import prune_vocabulary, token_ids_in  # noqa: E402

VARIANTS = {  # name -> (load precision, autocast dtype, fused forward, compile)
    "fp32 transformers": ("fp32", None, False, False),
    "bf16 transformers": ("bf16", None, False, False),
    "fp32": ("fp32", None, True, False),
    "fp32 + bf16 autocast": ("fp32", torch.bfloat16, True, False),
    "bf16": ("bf16", None, True, False),
    "bf16 + torch.compile": ("bf16", None, True, True),
    "dynamic-int8": ("dynamic-int8", None, False, False),
}
ONNX_VARIANTS = {"ONNX Runtime fp32": False, "ONNX Runtime int8": True}
"""name -> int8: the ONNX Runtime rows, scoring the student's ``kd.export`` folder."""


def build_student(folder: Path, urls: list[str]) -> Path:
    """The 3-layer student of the packaged MiniLM, vocabulary pruned to ``urls``' tokens, saved to ``folder``."""
    tokenizer = load_tokenizer("packaged:minilm")
    student = student_from_teacher(build_classifier("packaged:minilm"), 3)
    prune_vocabulary(student, tokenizer, token_ids_in(urls, tokenizer), folder)
    return folder


def load_variant(folder: Path, name: str):
    """``(model, tokenizer, autocast dtype)`` of variant ``name`` of the student in ``folder``."""
    if name in ONNX_VARIANTS:
        from models.onnx import load_onnx_classifier

        exported = folder.with_name(f"{folder.name}-onnx-{'int8' if ONNX_VARIANTS[name] else 'fp32'}")
        if not exported.exists():
            export_folder(folder, exported, int8=ONNX_VARIANTS[name])
        model, tokenizer = load_onnx_classifier(exported, threads=torch.get_num_threads())
        return model, tokenizer, None
    precision, amp, fused, compile_ = VARIANTS[name]
    model, tokenizer = load_classifier(folder, precision, "cpu")
    if fused:
        model = scoring_model(model, compile=compile_)
    return model, tokenizer, amp


def measure(folder: Path, name: str, urls: list[str], repeats: int, rounds: int, ceiling: float) -> dict:
    n = parameter_count(load_classifier(folder, "fp32", "cpu")[0], without_embeddings=True)
    model, tokenizer, amp = load_variant(folder, name)
    lengths = tokenize(Examples([normalize_url(u) for u in urls], [0] * len(urls)), tokenizer).lengths
    real, padded = token_counts(lengths, eval_batches(lengths, 256))
    started = time.perf_counter()
    predict_logits(model, tokenizer, urls[:1], autocast_dtype=amp)
    predict_logits(model, tokenizer, urls[:256], autocast_dtype=amp)
    first_calls_s = time.perf_counter() - started
    measure_latency(model, tokenizer, urls, batch_size=1, warmup=10, repeats=10, autocast_dtype=amp)
    throughputs, latencies = [], []
    for _ in range(rounds):
        throughputs.append(measure_throughput(model, tokenizer, urls, batch_size=256, autocast_dtype=amp))
        latencies.append(measure_latency(model, tokenizer, urls, batch_size=1, warmup=10, repeats=repeats,
                                         autocast_dtype=amp))
    urls_per_s, latency = statistics.median(throughputs), statistics.median(latencies)
    tokens_per_url = real / len(urls)
    return {"urls_per_s_batch_256": urls_per_s, "mfu_batch_256": 2 * n * tokens_per_url * urls_per_s / 1e12 / ceiling,
            "latency_ms_batch_1": latency, "mfu_batch_1": 2 * n * tokens_per_url / (latency / 1000) / 1e12 / ceiling,
            "rounds_urls_per_s": throughputs, "rounds_latency_ms": latencies,
            "padding_fraction": 1 - real / padded, "tokens_per_url": tokens_per_url, "nonembedding_parameters": n,
            "first_calls_s": first_calls_s}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--urls", type=int, default=8192, help="Hannousse URLs scored at batch 256 (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=400, help="timed batch-1 calls per round (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per figure, the median kept (default: %(default)s)")
    parser.add_argument("--variants", default=",".join([*VARIANTS, *ONNX_VARIANTS]),
                        help="comma-separated, of: " + ", ".join([*VARIANTS, *ONNX_VARIANTS]))
    parser.add_argument("--threads", type=int, help="torch threads, and ONNX Runtime's intra-op threads "
                        "(default: torch's, one per core)")
    parser.add_argument("--data-dir", help="folder with hannousse/ (default: ../shared/data or ./data)")
    parser.add_argument("--out", type=Path, help="results JSON (+ .md beside it)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    examples, source = benchmark_urls(BenchConfig(data_dir=args.data_dir), args.urls)
    urls = list(examples.urls)
    ceiling = matmul_tflops(torch.device("cpu"), torch.bfloat16, 2048)
    results = {"env": {"device": device_description(), **library_versions(),
                       "date": datetime.now(timezone.utc).isoformat(timespec="seconds")},
               "data": source, "urls": len(urls), "bf16_matmul_tflops": ceiling, "variants": {}}
    print(f"{results['env']['device']}; bf16 matmul 2048^3: {ceiling:.3f} TFLOP/s", flush=True)
    with tempfile.TemporaryDirectory(prefix="kd-cpu-scoring-") as tmp:
        folder = build_student(Path(tmp) / "student", urls)
        for name in args.variants.split(","):
            results["variants"][name] = row = measure(folder, name, urls, args.repeats, args.rounds, ceiling)
            print(f"{name}: {row['urls_per_s_batch_256']:,.0f} URL/s (MFU {row['mfu_batch_256']:.0%}), "
                  f"batch 1 {row['latency_ms_batch_1']:.2f} ms (MFU {row['mfu_batch_1']:.0%})", flush=True)
    table = markdown_table(
        ("variant", "URL/s at batch 256", "MFU", "ms at batch 1", "MFU", "padding", "first calls s"),
        [[name, f"{r['urls_per_s_batch_256']:,.0f}", f"{r['mfu_batch_256']:.0%}", f"{r['latency_ms_batch_1']:.2f}",
          f"{r['mfu_batch_1']:.0%}", f"{r['padding_fraction']:.1%}", f"{r['first_calls_s']:.1f}"]
         for name, r in results["variants"].items()],
        right=[False, True, True, True, True, True, True])
    print(table)
    if args.out:
        save_results(args.out, results, "CPU scoring of the 3-layer student",
                     f"{len(urls)} URLs of {source}; bf16 matmul {ceiling:.3f} TFLOP/s (the MFU denominator)", table)
    return results


def save_results(out: Path, results: dict, title: str, setting: str, body: str) -> None:
    """``results`` as JSON at ``out`` and a Markdown page beside it: the title, the
    date, machine and library versions of ``results["env"]``, ``setting``, then ``body``."""
    out.write_text(json.dumps(results, indent=2) + "\n")
    env = results["env"]
    out.with_suffix(".md").write_text(f"# {title}\n\n{env['date']}, {env['device']}, torch {env['torch']}, "
                                      f"transformers {env['transformers']}; {setting}.\n\n{body}\n")


if __name__ == "__main__":
    main()
