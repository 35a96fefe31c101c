"""Throughput benchmark, in one process on one device: the Hugging Face ``Trainer``
with default arguments (the baseline), the project's loop (teacher, student,
distillation from cached teacher logits and from a live teacher) and inference
in every precision that loads on the device.

    python -m kd.bench --out benchmarks/cpu-minilm.json        # CPU: packaged MiniLM-L6 + 3-layer student
    python -m kd.bench --profile --out benchmarks/cpu-minilm.json   # + torch.profiler top-ops tables
    python -m kd.bench --model bert-base-uncased --random-init --batch-size 256 --steps 50 --infer-urls 8192 --infer-batch-size 512 --out benchmarks/h200-bert-base.json
    python -m kd.bench --quick --out /tmp/bench.json            # seconds: a smoke run of every section
    python -m kd.bench --suite gpu                              # the GPU benchmark in one call (sized for about 5 min on an H100/H200)
    python -m kd.bench --suite gpu --smoke                      # the same sections on tiny models, on the CPU (< 1 min)

``--suite gpu`` is BERT-base (its shape on the packaged MiniLM's config and
vocabulary, random weights: speed does not depend on them) and its 6-layer
student: the Trainer with default arguments, the loop in bf16 and under
``torch.compile``, distillation from cached logits and from a live bf16
teacher, inference in every precision at batch 512 and 1, and the QLoRA
student on a SmolLM2-360M-shaped llama (NF4 + LoRA r=16). It writes
``benchmarks/gpu-<card>.json`` and ``.md`` with the card, driver and library
versions; ``benchmarks/gpu_suite.sh`` prepares and runs it on a machine
without network.

What is measured (after ``--warmup`` untimed steps, ``--steps`` timed ones):

- samples/s and real tokens/s (padding excluded), the padding fraction of the
  timed batches, peak memory (CUDA: allocated; CPU: process RSS);
- model TFLOP/s = useful FLOPs / s with useful FLOPs = 6 x N x real tokens per
  trained model and 2 x N x real tokens per forward-only model (the live
  teacher, inference), N = non-embedding parameters (lookups do no matmuls;
  attention score FLOPs are left out, URLs are short);
- MFU = model TFLOP/s / the ceiling, an n x n matmul timed in the same run
  (bf16 on CUDA, fp32 on CPU: the dtype the loop computes in there; the bf16
  rate for inference in bf16 weights).

The Trainer gets the URLs padded to ``--max-length`` as in most tutorials; the
loop pads each length-bucketed batch to its longest member. Inference is end to
end (normalise, tokenise, pad, forward) through ``models.quantized``.
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from kd.data.batching import TokenizedSet, eval_batches, length_bucketed_batches, token_counts, tokenize
from kd.data.splits import DataConfig, DataReport, Examples, load_examples
from kd.train.loss_fns import cross_entropy_sum, distillation_loss
from kd.errors import UsageError, run_cli
from kd.eval.inference import predict_tokenized, scoring_model
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
    infer_urls: int = 2048
    """URLs scored per precision: enough batches of ``infer_batch_size`` that length-sorting leaves little padding."""
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
    suite: str | None = None
    """The prepared run these settings come from (``--suite``), if any."""
    teacher_shape: dict = field(default_factory=dict)
    """Config fields that replace the ``--model``'s with ``random_init`` (e.g. BERT-base's widths)."""
    compile_backend: str | None = None
    """Add the row ``loop_teacher_compile``: the teacher's loop on ``torch.compile(backend=...)``."""
    causal_model: str | None = None
    """Add the row ``qlora``: a causal LM of this config and tokenizer (``packaged:smollm2``, a folder)
    from random init, reshaped by ``qlora_shape``, in NF4 with LoRA adapters of rank ``lora_r``."""
    qlora_shape: dict = field(default_factory=dict)
    qlora_batch_size: int = 64
    lora_r: int = 16


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


def cuda_driver() -> str | None:
    """The NVIDIA driver's version (from ``nvidia-smi``); None without CUDA."""
    if not torch.cuda.is_available():
        return None
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        return f"unknown ({type(err).__name__})"
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else "unknown"


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
                 n_trained: int, n_forward: int = 0, profiler=None, steps: int | None = None,
                 batch_size: int | None = None) -> dict:
    """Time ``steps`` optimizer steps of :func:`kd.train.loop.train` (one micro-batch each)
    of ``batch_size`` (default ``cfg.batch_size``) examples, in ``train.precision=auto``.

    ``data`` holds ``batch_size * (warmup + steps + 1)`` examples, so the timed
    steps stay inside the first epoch (no evaluation, no checkpoint); they use
    batches ``warmup .. warmup + steps - 1`` of the loop's own batch order.
    Useful FLOPs: ``(6 n_trained + 2 n_forward) x real tokens``.
    """
    steps, batch_size = steps or cfg.steps, batch_size or cfg.batch_size
    timer = StepTimer(cfg.warmup, steps, device, profiler)
    train_cfg = TrainConfig(epochs=1, batch_size=batch_size, seed=cfg.seed, log_every=10**9, max_steps=10**9)
    with tempfile.TemporaryDirectory(prefix="kd-bench-") as out_dir:
        train(model, loss_fn, data, lambda m: {"f1": 0.0}, train_cfg, Path(out_dir),
              save=lambda m, f: None, device=device, on_step=timer)
    if timer.seconds is None:
        raise RuntimeError(f"the loop stopped before step {cfg.warmup + steps}: {len(data)} examples are too few")
    batches = length_bucketed_batches(data.lengths, batch_size, seed=cfg.seed, epoch=0)[cfg.warmup : cfg.warmup + steps]
    real, padded = token_counts(data.lengths, batches)
    flops = (6 * n_trained + 2 * n_forward) * real
    samples = sum(len(b) for b in batches)
    precision = autocast_dtype(train_cfg.precision, device)
    return {**throughput(samples, real, padded, timer.seconds, flops, ceiling), "peak_memory_mib": timer.peak_mib,
            "steps": steps, "batch_size": batch_size, "autocast": str(precision).removeprefix("torch.")}


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
    :func:`models.quantized.load_classifier` ``(folder, precision)``, end to end, in the
    form kd.predict scores with (:func:`kd.eval.inference.scoring_model`, not compiled)."""
    from kd.data.urls import normalize_url
    from models.quantized import load_classifier

    model, tokenizer = load_classifier(folder, precision, device)
    scorer = scoring_model(model)
    lengths = tokenize(Examples([normalize_url(u) for u in urls], [0] * len(urls)), tokenizer, cfg.max_length).lengths
    real, padded = token_counts(lengths, eval_batches(lengths, cfg.infer_batch_size))
    memory = PeakMemory(device)
    memory.start()
    urls_per_s = measure_throughput(scorer, tokenizer, urls, batch_size=cfg.infer_batch_size, max_length=cfg.max_length)
    peak = memory.stop()
    seconds = len(urls) / urls_per_s
    latency = measure_latency(scorer, tokenizer, urls, batch_size=1, warmup=3, repeats=cfg.latency_repeats, max_length=cfg.max_length)
    return {**throughput(len(urls), real, padded, seconds, 2 * n_params * real, ceiling), "peak_memory_mib": peak,
            "latency_ms_batch_1": latency, "weights_mib": memory_footprint_bytes(model) / 2**20,
            "batch_size": cfg.infer_batch_size}


def qlora_section(urls: Examples, cfg: BenchConfig, device, ceiling: float) -> dict:
    """Training steps of the QLoRA student, as ``train_student.py --generative`` builds it:
    a causal LM (``cfg.causal_model``'s config reshaped by ``cfg.qlora_shape``, random
    weights) in NF4 with LoRA adapters of rank ``cfg.lora_r``, wrapped as a 2-way
    classifier on the URL prompts, cross-entropy at the answer position.

    Useful FLOPs per prompt token: 4 x N for the frozen base (forward, and the
    backward to the activations; no weight gradients), N = its non-embedding
    parameters; the adapters are left out.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from kd.data.prompts import PromptFormat, tokenize_prompts
    from models.causal_lm import load_causal_tokenizer
    from models.gguf import resolve_causal_lm
    from models.lora import load_qlora_student
    from models.paths import NO_REMOTE_CODE
    from models.verbalizer import VerbalizerClassifier

    config = AutoConfig.from_pretrained(resolve_causal_lm(cfg.causal_model), **NO_REMOTE_CODE)
    config.update(cfg.qlora_shape)
    tokenizer = load_causal_tokenizer(cfg.causal_model)
    with tempfile.TemporaryDirectory(prefix="kd-bench-lm-") as folder:
        torch.manual_seed(cfg.seed)
        base = AutoModelForCausalLM.from_config(config)
        n_base = parameter_count(base)
        n_nonembedding = n_base - base.get_input_embeddings().weight.numel()
        base.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        del base
        lm, tokenizer = load_qlora_student(folder, lora_r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, quantize="nf4",
                                           device=device)
    prompt = PromptFormat()
    model = VerbalizerClassifier(lm, prompt.token_ids(tokenizer))
    data = tokenize_prompts(urls, tokenizer, prompt)
    result = loop_section(model, cross_entropy_sum, data, cfg, device, ceiling, n_trained=0, n_forward=2 * n_nonembedding,
                          batch_size=cfg.qlora_batch_size)
    return {**result, "base_parameters": n_base, "trainable_parameters": parameter_count(lm, trainable_only=True),
            "lora_r": cfg.lora_r}


def inference_ceiling(ceiling: dict, precision: str) -> float:
    """The MFU denominator of an inference row: the bf16 matmul rate for bf16 weights,
    else the ceiling's own dtype (fp32 on the CPU, bf16 on CUDA)."""
    return ceiling.get("bfloat16_tflops", ceiling["tflops"]) if precision == "bf16" else ceiling["tflops"]


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
        "env": {"device": device_description(), "driver": cuda_driver(), "cuda": torch.version.cuda,
                **library_versions(), "git_commit": git_commit(),
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "settings": asdict(cfg),
    }
    log(f"kd.bench on {results['env']['device']}: {cfg.model}, batch {cfg.batch_size}, {cfg.warmup}+{cfg.steps} steps")
    ceiling = matmul_ceiling(device, cfg.ceiling_size or (8192 if device.type == "cuda" else 2048))
    results["ceiling"] = ceiling
    log(f"ceiling: {ceiling['dtype']} matmul {ceiling['n']}^3: {ceiling['tflops']:.3f} TFLOP/s ({json.dumps(ceiling)})")

    tokenizer = load_tokenizer(cfg.model)
    n_train = max(cfg.batch_size, cfg.qlora_batch_size if cfg.causal_model else 0) * (cfg.warmup + max(cfg.steps, cfg.profile_steps) + 1)
    examples, source = benchmark_urls(cfg, n_train + cfg.infer_urls)
    train_examples = Examples(examples.urls[:n_train], examples.labels[:n_train])
    infer_urls = examples.urls[n_train:]
    data = tokenize(train_examples, tokenizer, cfg.max_length)
    torch.manual_seed(cfg.seed)
    teacher = build_classifier(cfg.model, pretrained=not cfg.random_init, shape=cfg.teacher_shape).to(device)
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
        **({"loop_teacher_compile": (lambda: torch.compile(copy.deepcopy(teacher), dynamic=True, backend=cfg.compile_backend),
                                     cross_entropy_sum, n_teacher, 0)} if cfg.compile_backend else {}),
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
        if cfg.causal_model:
            record(sections, "qlora", log, lambda: qlora_section(train_examples, cfg, device, ceiling["tflops"]))
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
                       lambda: inference_section(folders[role], precision, infer_urls, n_params, cfg, device,
                                                 inference_ceiling(ceiling, precision)),
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
        if "lora_r" in r:
            note.append(f"NF4 base {r['base_parameters'] / 1e6:.0f} M + LoRA r={r['lora_r']} "
                        f"({r['trainable_parameters'] / 1e6:.2f} M trainable), batch {r['batch_size']}")
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
        f"{env['date']}, driver {env.get('driver')} (CUDA {env.get('cuda')}), torch {env['torch']}, "
        f"transformers {env['transformers']}, bitsandbytes {env['bitsandbytes']}, "
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
    if cfg.suite:
        return Path("benchmarks") / f"{cfg.suite}-{re.sub(r'[^a-z0-9]+', '-', device_description().lower()).strip('-')}.json"
    slug = re.sub(r"[^a-z0-9]+", "-", f"{'cuda' if torch.cuda.is_available() else 'cpu'}-{Path(cfg.model).name}".lower()).strip("-")
    return Path("benchmarks") / f"{slug}.json"


def write_outputs(results: dict, out: Path) -> None:
    """``out`` (JSON) and the same name with ``.md`` (the table and the profiles)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    out.with_suffix(".md").write_text(markdown_report(results))


QUICK = dict(steps=2, warmup=1, batch_size=8, infer_urls=16, infer_batch_size=8, latency_repeats=2, ceiling_size=256, profile_steps=1)

BERT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
"""bert-base-uncased's shape; with the packaged MiniLM's config and vocabulary (bert-base-uncased's
30,522 WordPiece tokens) it is a 109.5 M-parameter BERT-base, built offline."""
SMOLLM2_360M = {"hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32,
                "num_attention_heads": 15, "num_key_value_heads": 5}
"""SmolLM2-360M's shape (361.8 M parameters) on the packaged SmolLM2-135M's config and tokenizer."""
SUITES = {
    # Sized from the anchor timings (../shared/bench) to finish in about 5 minutes on one H100/H200,
    # torch.compile taking one or two of them; not yet run on a GPU.
    "gpu": dict(random_init=True, teacher_shape=BERT_BASE, student_layers=6, batch_size=256, warmup=8, steps=40,
                infer_urls=16384, infer_batch_size=512, latency_repeats=50,
                precisions=("fp32", "bf16", "nf4", "fp4", "int8"), compile_backend="inductor",
                causal_model="packaged:smollm2", qlora_shape=SMOLLM2_360M, qlora_batch_size=64, lora_r=16),
}
SMOKE = dict(teacher_shape={"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128},
             student_layers=1, batch_size=4, warmup=1, steps=2, infer_urls=16, infer_batch_size=8, latency_repeats=2,
             ceiling_size=256, precisions=("fp32", "bf16", "nf4"), compile_backend="aot_eager", qlora_batch_size=4,
             qlora_shape={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                          "num_attention_heads": 2, "num_key_value_heads": 1})
"""``--smoke``: the suite's sections on tiny models, a few steps, on the CPU in well under a minute
(``aot_eager`` traces like inductor without compiling kernels; 64 wide: NF4 quantizes in blocks of 64)."""
SIZE_OPTIONS = ("batch_size", "steps", "warmup", "infer_urls", "infer_batch_size", "ceiling_size")


def parse_args(argv=None) -> tuple[BenchConfig, Path | None]:
    defaults = BenchConfig()
    p = argparse.ArgumentParser(prog="python -m kd.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=sorted(SUITES),
                   help="a prepared run: 'gpu' = every section on a BERT-base-shaped teacher (random init) and "
                        "its 6-layer student, the loop also under torch.compile, inference at batch 512 and 1 in "
                        "fp32/bf16/nf4/fp4/int8, and a 360M llama-shaped QLoRA student (NF4 + LoRA r=16); "
                        "writes benchmarks/gpu-<card>.json and .md")
    p.add_argument("--smoke", action="store_true", help="with --suite: the same sections on tiny models, a few steps (the CPU test of the suite)")
    p.add_argument("--model", default=defaults.model, help="teacher: hub name, folder or packaged:minilm (default: %(default)s)")
    p.add_argument("--causal-model", help="with --suite gpu: config and tokenizer of the QLoRA student (default: packaged:smollm2; "
                                          "a folder with config.json and the tokenizer files will do)")
    p.add_argument("--random-init", action="store_true", help="random weights from the model's config (speed does not depend on them)")
    p.add_argument("--student-layers", type=int, help=f"student depth, layers copied from the teacher (default: {defaults.student_layers})")
    p.add_argument("--batch-size", type=int, help=f"training batch (default: {defaults.batch_size}; --quick {QUICK['batch_size']})")
    p.add_argument("--steps", type=int, help=f"timed optimizer steps per section (default: {defaults.steps}; --quick {QUICK['steps']})")
    p.add_argument("--warmup", type=int, help=f"untimed steps before them (default: {defaults.warmup}; --quick {QUICK['warmup']})")
    p.add_argument("--max-length", type=int, default=defaults.max_length, help="tokens per URL; the Trainer pads to it (default: %(default)s)")
    p.add_argument("--infer-urls", type=int, help=f"URLs scored per precision (default: {defaults.infer_urls})")
    p.add_argument("--infer-batch-size", type=int, help=f"inference batch (default: {defaults.infer_batch_size})")
    p.add_argument("--ceiling-size", type=int, help="n of the n x n ceiling matmul (default: 8192 on CUDA, 2048 on CPU; --quick 256)")
    p.add_argument("--precisions", help=f"inference precisions, comma-separated (default: {','.join(defaults.precisions)})")
    p.add_argument("--synthetic", action="store_true", help="generated URLs instead of ../shared/data/hannousse")
    p.add_argument("--data-dir", help="folder with hannousse/dataset_phishing.csv (default: ../shared/data or ./data)")
    p.add_argument("--profile", action="store_true", help="also profile each loop section (torch.profiler top-ops tables, into the .md and .json)")
    p.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run (seconds with a tiny model); the explicit options still apply")
    p.add_argument("--out", type=Path, help="results JSON (+ .md next to it); default benchmarks/<device>-<model>.json "
                                            "(--suite gpu: benchmarks/gpu-<card>.json), none with --quick or --smoke")
    args = p.parse_args(argv)
    if args.smoke and not args.suite:
        raise UsageError("--smoke goes with --suite (for the plain bench's tiny run, give --quick)")
    preset = {**SUITES.get(args.suite, {}), **(SMOKE if args.smoke else {}), **(QUICK if args.quick else {})}
    given = {k: v for k, v in vars(args).items() if k in (*SIZE_OPTIONS, "student_layers", "causal_model") and v is not None}
    if args.precisions:
        given["precisions"] = tuple(args.precisions.split(","))
    cfg = BenchConfig(**{**preset, **given, "model": args.model, "random_init": args.random_init or preset.get("random_init", False),
                         "max_length": args.max_length, "synthetic": args.synthetic, "data_dir": args.data_dir,
                         "profile": args.profile, "suite": args.suite})
    if min(cfg.steps, cfg.warmup, cfg.batch_size) < 1:
        raise UsageError("--steps, --warmup and --batch-size must be at least 1")
    out = args.out if args.out or args.quick or args.smoke else default_out(cfg)
    return cfg, out


def main(argv=None, log=print) -> dict:
    """Run the bench; ``log`` gets every line printed, the table last but for where it was written."""
    cfg, out = parse_args(argv)
    results = run(cfg, log)
    log("")
    log(format_table(results))
    if out is not None:
        write_outputs(results, out)
        log(f"\nwrote {out} and {out.with_suffix('.md')}")
    return results


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="python -m kd.bench"))
