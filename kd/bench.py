"""Throughput benchmark, in one process on one device: the Hugging Face ``Trainer``
with default arguments (the baseline), the project's loop (teacher, student,
distillation from cached teacher logits and from a live teacher) and inference
in every precision that loads on the device.

    python -m kd.bench --out benchmarks/cpu-minilm.json        # CPU: packaged MiniLM-L6 + 3-layer student
    python -m kd.bench --profile --out benchmarks/cpu-minilm.json   # + torch.profiler top-ops tables
    python -m kd.bench --model bert-base-uncased --random-init --batch-size 256 --steps 50 --infer-urls 8192 --infer-batch-size 512 --out benchmarks/h200-bert-base.json
    python -m kd.bench --quick --out /tmp/bench.json            # seconds: a smoke run of every section

What is measured (after ``--warmup`` untimed steps, ``--steps`` timed ones):

- samples/s and real tokens/s (padding excluded), the padding fraction of the
  timed batches, peak memory (CUDA: allocated; CPU: process RSS);
- model TFLOP/s = useful FLOPs / s with useful FLOPs = 6 x N x real tokens per
  trained model and 2 x N x real tokens per forward-only model (the live
  teacher, inference), N = non-embedding parameters (lookups do no matmuls;
  attention score FLOPs are left out, URLs are short);
- MFU = model TFLOP/s / the ceiling, an n x n matmul timed in the same run
  (bf16 on CUDA, fp32 on CPU: the dtype the loop computes in there).

The Trainer gets the URLs padded to ``--max-length`` as in most tutorials; the
loop pads each length-bucketed batch to its longest member. Inference is end to
end (normalise, tokenise, pad, forward) through ``models.quantized``.
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from kd.data.batching import TokenizedSet, eval_batches, length_bucketed_batches, token_counts, tokenize
from kd.data.splits import DataConfig, DataReport, Examples, load_examples
from kd.train.loss_fns import cross_entropy_sum, distillation_loss
from kd.errors import UsageError, run_cli
from kd.eval.inference import predict_tokenized
from kd.eval.measure import (
    PeakMemory,
    matmul_ceiling,
    measure_latency,
    measure_throughput,
    memory_footprint_bytes,
    parameter_count,
    synchronize,
)
from kd.eval.report import markdown_table
from kd.train.loop import TrainConfig, autocast_dtype, train
from kd.train.runinfo import device_description, git_commit, library_versions
from models.encoder import build_classifier, load_tokenizer

TRAINING_SECTIONS = ("loop_teacher", "loop_student", "distill_cached", "distill_live")
OBJECTIVE = "ce:0.5,fkl:0.5@T=2"
"""The default distillation objective of ``train_student.py`` (logits only, so it can use the cache)."""


@dataclass
class BenchConfig:
    """What to run (the command-line options)."""

    model: str = "packaged:minilm"
    random_init: bool = False
    student_layers: int = 3
    batch_size: int = 32
    steps: int = 10
    warmup: int = 2
    max_length: int = 128
    infer_urls: int = 512
    infer_batch_size: int = 256
    latency_repeats: int = 20
    precisions: tuple[str, ...] = ("fp32", "bf16", "nf4", "fp4", "int8", "dynamic-int8")
    ceiling_size: int | None = None
    """Matmul size of the ceiling (None: 8192 on CUDA, 2048 on CPU)."""
    synthetic: bool = False
    data_dir: str | None = None
    profile: bool = False
    profile_steps: int = 3
    seed: int = 0


# --------------------------------------------------------------------------- measuring


class StepTimer:
    """Called after every optimizer step (``on_step`` of :func:`kd.train.loop.train`, or a
    ``Trainer`` callback): starts the clock, memory peak and profiler after step
    ``warmup``, stops them after step ``warmup + steps`` and returns True there:
    the caller stops training after that step.
    """

    def __init__(self, warmup: int, steps: int, device: torch.device, profiler=None):
        self.warmup, self.steps, self.device, self.profiler = warmup, steps, device, profiler
        self.memory = PeakMemory(device)
        self.seconds = self.peak_mib = None
        self._start = None

    def __call__(self, step: int) -> bool:
        if step == self.warmup:
            synchronize(self.device)
            self.memory.start()
            if self.profiler is not None:
                self.profiler.start()
            self._start = time.perf_counter()
        elif step == self.warmup + self.steps:
            synchronize(self.device)
            self.seconds = time.perf_counter() - self._start
            if self.profiler is not None:
                self.profiler.stop()
            self.peak_mib = self.memory.stop()
            return True
        return False


def throughput(samples: int, real_tokens: int, padded_tokens: int, seconds: float, flops: float, ceiling: float) -> dict:
    """The rates every section reports; ``flops`` are the useful FLOPs of the timed work."""
    return {
        "samples_per_s": samples / seconds,
        "real_tokens_per_s": real_tokens / seconds,
        "padding_fraction": 1 - real_tokens / padded_tokens,
        "model_tflops": flops / seconds / 1e12,
        "mfu": flops / seconds / 1e12 / ceiling,
        "seconds": seconds,
    }


# --------------------------------------------------------------------------- data


def synthetic_urls(n: int, seed: int) -> Examples:
    """``n`` made-up URLs (half labelled phishing), 1-8 path words long, for runs without the data."""
    rng = np.random.default_rng(seed)
    words = ["login", "verify", "secure", "account", "update", "bank", "blog", "news", "docs", "shop", "wiki", "team"]
    urls = []
    for i in range(n):
        path = "/".join(rng.choice(words, size=rng.integers(1, 9)))
        urls.append(f"http://{rng.choice(words)}{i}.{'xyz' if i % 2 else 'com'}/{path}?id={rng.integers(10**6)}")
    return Examples(urls, [i % 2 for i in range(n)])


def benchmark_urls(cfg: BenchConfig, n: int) -> tuple[Examples, str]:
    """``n`` URLs drawn at random (seeded) from the Hannousse data via :mod:`kd.data.splits`
    (normalised, de-duplicated), or :func:`synthetic_urls` when absent or asked for."""
    data_cfg = DataConfig(data_dir=cfg.data_dir)
    data_cfg.resolve_data_dir()
    csv = Path(data_cfg.data_dir or ".") / data_cfg.sources[0]
    if cfg.synthetic or not csv.is_file():
        return synthetic_urls(n, cfg.seed), "synthetic"
    examples = load_examples(data_cfg.source_specs(), data_cfg, DataReport(), "bench")
    pick = np.random.default_rng(cfg.seed).choice(len(examples), size=n, replace=n > len(examples))
    return examples.subset(pick.tolist()), str(csv)


# --------------------------------------------------------------------------- sections


def loop_section(model, loss_fn, data: TokenizedSet, cfg: BenchConfig, device, ceiling: float, *,
                 n_trained: int, n_forward: int = 0, profiler=None, steps: int | None = None) -> dict:
    """Time ``steps`` optimizer steps of :func:`kd.train.loop.train` (one micro-batch each).

    ``data`` holds ``batch_size * (warmup + steps + 1)`` examples, so the timed
    steps stay inside the first epoch (no evaluation, no checkpoint); they use
    batches ``warmup .. warmup + steps - 1`` of the loop's own batch order.
    Useful FLOPs: ``(6 n_trained + 2 n_forward) x real tokens``.
    """
    steps = steps or cfg.steps
    timer = StepTimer(cfg.warmup, steps, device, profiler)
    train_cfg = TrainConfig(epochs=1, batch_size=cfg.batch_size, seed=cfg.seed, log_every=10**9, max_steps=10**9)
    with tempfile.TemporaryDirectory(prefix="kd-bench-") as out_dir:
        train(model, loss_fn, data, lambda m: {"f1": 0.0}, train_cfg, Path(out_dir),
              save=lambda m, f: None, device=device, on_step=timer)
    if timer.seconds is None:
        raise RuntimeError(f"the loop stopped before step {cfg.warmup + steps}: {len(data)} examples are too few")
    batches = length_bucketed_batches(data.lengths, cfg.batch_size, seed=cfg.seed, epoch=0)[cfg.warmup : cfg.warmup + steps]
    real, padded = token_counts(data.lengths, batches)
    flops = (6 * n_trained + 2 * n_forward) * real
    samples = sum(len(b) for b in batches)
    return {**throughput(samples, real, padded, timer.seconds, flops, ceiling), "peak_memory_mib": timer.peak_mib,
            "steps": steps, "batch_size": cfg.batch_size}


def trainer_section(folder: Path, examples: Examples, tokenizer, cfg: BenchConfig, device, ceiling: float) -> dict:
    """Time the Hugging Face ``Trainer`` with default ``TrainingArguments`` except the
    output folder, batch size, step count and reporting, on URLs padded to ``max_length``.

    Real tokens per step are the expected ``batch_size x mean URL length``
    (the Trainer's sampler picks the batches).
    """
    from transformers import AutoModelForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

    steps = cfg.steps
    timer = StepTimer(cfg.warmup, steps, device)

    class Timing(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if timer(state.global_step):
                control.should_training_stop = True

    encoded = tokenizer(list(examples.urls), padding="max_length", truncation=True, max_length=cfg.max_length)
    rows = [{**{k: v[i] for k, v in encoded.items()}, "labels": examples.labels[i]} for i in range(len(examples))]
    real_per_example = float(np.mean([sum(mask) for mask in encoded["attention_mask"]]))
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2, trust_remote_code=False)
    overrides = {"per_device_train_batch_size": cfg.batch_size, "max_steps": cfg.warmup + steps + 1, "report_to": "none"}
    with tempfile.TemporaryDirectory(prefix="kd-bench-trainer-") as out_dir:
        args = TrainingArguments(output_dir=out_dir, **overrides)
        Trainer(model=model, args=args, train_dataset=rows, callbacks=[Timing()]).train()
    samples = steps * cfg.batch_size
    real = samples * real_per_example
    flops = 6 * parameter_count(model, without_embeddings=True) * real
    return {**throughput(samples, real, samples * cfg.max_length, timer.seconds, flops, ceiling),
            "peak_memory_mib": timer.peak_mib, "steps": steps, "batch_size": cfg.batch_size,
            "arguments_changed": sorted(["output_dir", *overrides]), "optim": str(args.optim)}


def inference_section(folder: Path, precision: str, urls: list[str], n_params: int, cfg: BenchConfig, device, ceiling: float) -> dict:
    """Throughput (batches of ``infer_batch_size``, length-sorted) and batch-1 latency of
    :func:`models.quantized.load_classifier` ``(folder, precision)``, end to end."""
    from kd.data.urls import normalize_url
    from models.quantized import load_classifier

    model, tokenizer = load_classifier(folder, precision, device)
    lengths = tokenize(Examples([normalize_url(u) for u in urls], [0] * len(urls)), tokenizer, cfg.max_length).lengths
    real, padded = token_counts(lengths, eval_batches(lengths, cfg.infer_batch_size))
    memory = PeakMemory(device)
    memory.start()
    urls_per_s = measure_throughput(model, tokenizer, urls, batch_size=cfg.infer_batch_size, max_length=cfg.max_length)
    peak = memory.stop()
    seconds = len(urls) / urls_per_s
    latency = measure_latency(model, tokenizer, urls, batch_size=1, warmup=3, repeats=cfg.latency_repeats, max_length=cfg.max_length)
    return {**throughput(len(urls), real, padded, seconds, 2 * n_params * real, ceiling), "peak_memory_mib": peak,
            "latency_ms_batch_1": latency, "weights_mib": memory_footprint_bytes(model) / 2**20,
            "batch_size": cfg.infer_batch_size}


def top_ops_table(profiler, device: torch.device, rows: int = 15) -> str:
    """The profiler's operators sorted by self time on the device that does the work."""
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return profiler.key_averages().table(sort_by=key, row_limit=rows)


def new_profiler(device: torch.device):
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    return profile(activities=activities)


# --------------------------------------------------------------------------- the run


def run(cfg: BenchConfig, log=print) -> dict:
    """Every section in turn; one that fails is recorded with its error and the run goes on."""
    from models.student import student_from_teacher

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = {
        "env": {"device": device_description(), **library_versions(), "git_commit": git_commit(),
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "settings": asdict(cfg),
    }
    log(f"kd.bench on {results['env']['device']}: {cfg.model}, batch {cfg.batch_size}, {cfg.warmup}+{cfg.steps} steps")
    ceiling = matmul_ceiling(device, cfg.ceiling_size or (8192 if device.type == "cuda" else 2048))
    results["ceiling"] = ceiling
    log(f"ceiling: {ceiling['dtype']} matmul {ceiling['n']}^3: {ceiling['tflops']:.3f} TFLOP/s ({json.dumps(ceiling)})")

    tokenizer = load_tokenizer(cfg.model)
    n_train = cfg.batch_size * (cfg.warmup + max(cfg.steps, cfg.profile_steps) + 1)
    examples, source = benchmark_urls(cfg, n_train + cfg.infer_urls)
    train_examples = Examples(examples.urls[:n_train], examples.labels[:n_train])
    infer_urls = examples.urls[n_train:]
    data = tokenize(train_examples, tokenizer, cfg.max_length)
    torch.manual_seed(cfg.seed)
    teacher = build_classifier(cfg.model, pretrained=not cfg.random_init).to(device)
    student = student_from_teacher(teacher, cfg.student_layers)
    n_teacher, n_student = (parameter_count(m, without_embeddings=True) for m in (teacher, student))
    results["data"] = {"source": source, "train_examples": len(data), "inference_urls": len(infer_urls),
                       "mean_tokens": float(data.lengths.mean()), "max_length": cfg.max_length}
    results["models"] = {"teacher_parameters": parameter_count(teacher), "teacher_nonembedding": n_teacher,
                         "student_parameters": parameter_count(student), "student_nonembedding": n_student,
                         "student_layers": cfg.student_layers}
    started = time.perf_counter()
    teacher_logits = predict_tokenized(teacher, data, batch_size=cfg.infer_batch_size,
                                       autocast_dtype=autocast_dtype("auto", device))
    results["models"]["teacher_logit_cache_s"] = time.perf_counter() - started

    from losses import build_objective

    objective = build_objective(OBJECTIVE).to(device)
    frozen_teacher = copy.deepcopy(teacher)  # distillation_loss freezes it; the teacher section trains copies of `teacher`
    training = {  # name -> (fresh model, loss_fn, trained / forward-only non-embedding parameters)
        "loop_teacher": (lambda: copy.deepcopy(teacher), cross_entropy_sum, n_teacher, 0),
        "loop_student": (lambda: copy.deepcopy(student), cross_entropy_sum, n_student, 0),
        "distill_cached": (lambda: copy.deepcopy(student), distillation_loss(objective, teacher_logits=teacher_logits), n_student, 0),
        "distill_live": (lambda: copy.deepcopy(student), distillation_loss(objective, teacher=frozen_teacher), n_student, n_teacher),
    }
    sections, profiles = {}, {}
    with tempfile.TemporaryDirectory(prefix="kd-bench-models-") as tmp:
        folders = {"teacher": Path(tmp) / "teacher", "student": Path(tmp) / "student"}
        for role, model in (("teacher", teacher), ("student", student)):
            model.save_pretrained(folders[role])
            tokenizer.save_pretrained(folders[role])
        record(sections, "hf_trainer", log, lambda: trainer_section(folders["teacher"], train_examples, tokenizer, cfg, device, ceiling["tflops"]))
        for name, (fresh, loss_fn, n_trained, n_forward) in training.items():
            record(sections, name, log, lambda: loop_section(fresh(), loss_fn, data, cfg, device, ceiling["tflops"],
                                                             n_trained=n_trained, n_forward=n_forward))
        if cfg.profile:
            profiles = profile_sections(training, data, cfg, device, ceiling["tflops"], log)
        student_step = sections.get("loop_student", {}).get("samples_per_s")
        for name in ("distill_cached", "distill_live"):
            if student_step and "samples_per_s" in sections.get(name, {}):
                sections[name]["step_time_vs_student"] = student_step / sections[name]["samples_per_s"]
        inference = {}
        for role, n_params in (("teacher", n_teacher), ("student", n_student)):
            for precision in cfg.precisions:
                record(inference, f"{role}/{precision}", log,
                       lambda: inference_section(folders[role], precision, infer_urls, n_params, cfg, device, ceiling["tflops"]),
                       skippable=True)
    results.update(training=sections, inference=inference, profiles=profiles)
    return results


def record(into: dict, name: str, log, measure, skippable: bool = False) -> None:
    """``into[name] = measure()``, or ``{"error": ...}`` so that one failure does not
    cost the run; with ``skippable``, a ``ValueError`` (``load_classifier``'s answer
    to a precision the device cannot run) is recorded as ``{"skipped": ...}``."""
    log(f"== {name}")
    try:
        into[name] = measure()
    except ValueError as err:
        if not skippable:
            traceback.print_exc()
        into[name] = {"skipped" if skippable else "error": f"{type(err).__name__}: {err}"}
    except Exception as err:  # noqa: BLE001 - reported in the results and the table
        traceback.print_exc()
        into[name] = {"error": f"{type(err).__name__}: {err}"}
    log(f"   {json.dumps(into[name], default=float)[:300]}")


def profile_sections(training: dict, data, cfg: BenchConfig, device, ceiling: float, log) -> dict:
    """``--profile``: each loop section again for ``profile_steps`` steps under
    ``torch.profiler``; the top-ops table per section."""
    tables = {}
    for name, (fresh, loss_fn, n_trained, n_forward) in training.items():
        log(f"== profile {name}")
        profiler = new_profiler(device)
        loop_section(fresh(), loss_fn, data, cfg, device, ceiling, n_trained=n_trained, n_forward=n_forward,
                     profiler=profiler, steps=cfg.profile_steps)
        tables[name] = top_ops_table(profiler, device)
    return tables


# --------------------------------------------------------------------------- output


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def format_table(results: dict) -> str:
    """A Markdown table: one row per section and per (model, precision)."""
    columns = ("what", "samples/s", "real tokens/s", "padding", "model TFLOP/s", "MFU", "peak MiB", "note")
    rows = []
    for name, r in [*results["training"].items(), *((f"inference {n}", r) for n, r in results["inference"].items())]:
        if "samples_per_s" not in r:
            rows.append([name, "", "", "", "", "", "", str(r.get("error") or r.get("skipped"))])
            continue
        note = []
        if "step_time_vs_student" in r:
            note.append(f"{r['step_time_vs_student']:.2f}x student step time")
        if "latency_ms_batch_1" in r:
            note.append(f"batch 1: {r['latency_ms_batch_1']:.1f} ms; weights {r['weights_mib']:.0f} MiB")
        rows.append([name, f"{r['samples_per_s']:,.1f}", f"{r['real_tokens_per_s']:,.0f}", f"{r['padding_fraction']:.1%}",
                     _fmt(r["model_tflops"], ".4f"), f"{r['mfu']:.1%}", _fmt(r["peak_memory_mib"], ",.0f"), "; ".join(note)])
    return markdown_table(columns, rows, right=[False, *[True] * 6, False])


def markdown_report(results: dict) -> str:
    env, c, d, m = results["env"], results["ceiling"], results["data"], results["models"]
    parts = [
        f"# kd.bench: {results['settings']['model']} on {env['device']}",
        "",
        f"{env['date']}, torch {env['torch']}, transformers {env['transformers']}, bitsandbytes {env['bitsandbytes']}, "
        f"python {env['python']}, commit {env['git_commit']}.",
        f"Ceiling (MFU denominator): {c['dtype']} matmul {c['n']}^3 = {c['tflops']:.3f} TFLOP/s "
        f"(other dtype: {', '.join(f'{k} {v:.3f}' for k, v in c.items() if k.endswith('_tflops'))}). Data: {d['source']} "
        f"({d['train_examples']} training examples, mean {d['mean_tokens']:.1f} tokens). "
        f"Teacher {m['teacher_parameters'] / 1e6:.1f} M parameters ({m['teacher_nonembedding'] / 1e6:.1f} M non-embedding), "
        f"student {m['student_layers']} layers {m['student_parameters'] / 1e6:.1f} M ({m['student_nonembedding'] / 1e6:.1f} M). "
        f"Batch {results['settings']['batch_size']}, {results['settings']['steps']} timed steps.",
        "",
        format_table(results),
    ]
    for name, table in results.get("profiles", {}).items():
        parts += ["", f"## Profile: {name} (top operators by self time)", "", "```", table, "```"]
    return "\n".join(parts) + "\n"


def default_out(cfg: BenchConfig) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", f"{'cuda' if torch.cuda.is_available() else 'cpu'}-{Path(cfg.model).name}".lower()).strip("-")
    return Path("benchmarks") / f"{slug}.json"


def write_outputs(results: dict, out: Path) -> None:
    """``out`` (JSON) and the same name with ``.md`` (the table and the profiles)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    out.with_suffix(".md").write_text(markdown_report(results))


QUICK = dict(steps=2, warmup=1, batch_size=8, infer_urls=16, infer_batch_size=8, latency_repeats=2, ceiling_size=256, profile_steps=1)


def parse_args(argv=None) -> tuple[BenchConfig, Path | None]:
    defaults = BenchConfig()
    p = argparse.ArgumentParser(prog="python -m kd.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=defaults.model, help="teacher: hub name, folder or packaged:minilm (default: %(default)s)")
    p.add_argument("--random-init", action="store_true", help="random weights from the model's config (speed does not depend on them)")
    p.add_argument("--student-layers", type=int, default=defaults.student_layers, help="student depth, layers copied from the teacher (default: %(default)s)")
    p.add_argument("--batch-size", type=int, help=f"training batch (default: {defaults.batch_size}; --quick {QUICK['batch_size']})")
    p.add_argument("--steps", type=int, help=f"timed optimizer steps per section (default: {defaults.steps}; --quick {QUICK['steps']})")
    p.add_argument("--warmup", type=int, help=f"untimed steps before them (default: {defaults.warmup}; --quick {QUICK['warmup']})")
    p.add_argument("--max-length", type=int, default=defaults.max_length, help="tokens per URL; the Trainer pads to it (default: %(default)s)")
    p.add_argument("--infer-urls", type=int, help=f"URLs scored per precision (default: {defaults.infer_urls})")
    p.add_argument("--infer-batch-size", type=int, help=f"inference batch (default: {defaults.infer_batch_size})")
    p.add_argument("--ceiling-size", type=int, help="n of the n x n ceiling matmul (default: 8192 on CUDA, 2048 on CPU; --quick 256)")
    p.add_argument("--precisions", default=",".join(defaults.precisions), help="inference precisions, comma-separated (default: %(default)s)")
    p.add_argument("--synthetic", action="store_true", help="generated URLs instead of ../shared/data/hannousse")
    p.add_argument("--data-dir", help="folder with hannousse/dataset_phishing.csv (default: ../shared/data or ./data)")
    p.add_argument("--profile", action="store_true", help="also profile each loop section (torch.profiler top-ops tables, into the .md and .json)")
    p.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run (seconds with a tiny model); the explicit options still apply")
    p.add_argument("--out", type=Path, help="results JSON (+ .md next to it); default benchmarks/<device>-<model>.json, none with --quick")
    args = p.parse_args(argv)
    sizes = {**(QUICK if args.quick else {}), **{k: v for k, v in vars(args).items()
                                                 if k in ("batch_size", "steps", "warmup", "infer_urls", "infer_batch_size", "ceiling_size") and v is not None}}
    cfg = BenchConfig(model=args.model, random_init=args.random_init, student_layers=args.student_layers,
                      max_length=args.max_length, precisions=tuple(args.precisions.split(",")), synthetic=args.synthetic,
                      data_dir=args.data_dir, profile=args.profile, **sizes)
    if min(cfg.steps, cfg.warmup, cfg.batch_size) < 1:
        raise UsageError("--steps, --warmup and --batch-size must be at least 1")
    out = args.out if args.out or args.quick else default_out(cfg)
    return cfg, out


def main(argv=None) -> dict:
    cfg, out = parse_args(argv)
    results = run(cfg)
    print()
    print(format_table(results))
    if out is not None:
        write_outputs(results, out)
        print(f"\nwrote {out} and {out.with_suffix('.md')}")
    return results


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="python -m kd.bench"))
