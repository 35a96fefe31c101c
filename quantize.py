"""Quantize a student (and its teacher) and report size, speed and accuracy side by side.

    python quantize.py --student runs/student-minilm/best --teacher runs/teacher-minilm/best
    python quantize.py --student S --teacher T --precisions nf4 int8 --out runs/quantized

For every variant — the teacher in fp32 and bf16, the student in fp32, bf16
and each requested quantized precision — the model is loaded (quantized on
the way), saved to ``OUT/<role>-<precision>/`` before its first forward,
loaded back from that folder (so what is measured is what was saved), and
measured on the current device:

- parameters, size on disk of the saved folder, in-memory footprint
  (weights, buffers and quantization state);
- accuracy, F1, ROC-AUC and TPR at 1 % FPR on the test split, at the
  threshold that maximises F1 on the validation split, scored in the
  variant's precision (the fp32 variant in the source's recorded
  ``scoring_precision``, so it reproduces the training run's threshold);
- median latency at batch 1 and throughput at batch 256, end to end
  (normalise, tokenise, forward);
- "% smaller than the fp32 teacher" in memory and on disk.

The data split is the student checkpoint's own (its run_info.json), so no
test URL was seen in training. Each saved folder gets a ``metrics.json`` with
its threshold, which ``python -m kd.predict --model OUT/<role>-<precision>``
then uses. Writes OUT/report.json, OUT/report.md and OUT/size_vs_f1.png.
"""
from __future__ import annotations

import argparse
import gc
import shutil
import sys
import time
from pathlib import Path

import torch

from kd.argtypes import positive_int, token_length
from kd.data.batching import tokenize
from kd.data.splits import build_splits
from kd.errors import UsageError, run_cli, usage_errors
from kd.eval.measure import (
    measure_latency,
    measure_throughput,
    memory_footprint_bytes,
    parameter_count,
    size_on_disk_bytes,
)
from kd.eval.report import markdown_table
from kd.eval.scoring import final_evaluation, saved_scoring
from kd.evaluate import add_data_arguments, data_config_for
from kd.train.checkpoint import write_json
from kd.train.runinfo import device_description, library_versions
from models.paths import resolve_model_path
from models.quantized import QUANTIZED_PRECISIONS, load_classifier, save_quantized

TEACHER_PRECISIONS = ("fp32", "bf16")
STUDENT_BASE_PRECISIONS = ("fp32", "bf16")
REPORT_METRICS = ("accuracy", "f1", "roc_auc", "tpr_at_1pct_fpr")


def default_quantized_precisions(device: torch.device) -> list[str]:
    """bitsandbytes NF4, FP4 and LLM.int8 everywhere; torch dynamic int8 on CPU only."""
    return [p for p in QUANTIZED_PRECISIONS if p != "dynamic-int8" or device.type == "cpu"]


def save_variant(source: Path, precision: str, folder: Path, device: torch.device) -> int:
    """Load ``source`` in ``precision`` and save it to ``folder`` before any forward
    (bitsandbytes repacks 4-bit weights on the first CPU forward; see save_quantized).
    Returns the bytes saved (weights, config, tokenizer)."""
    if folder.exists():
        shutil.rmtree(folder)
    model, tokenizer = load_classifier(source, precision, device)
    save_quantized(model, tokenizer, folder, precision)
    del model
    gc.collect()
    return size_on_disk_bytes(folder)


def variant_scoring_precision(source: Path, precision: str) -> str:
    """The precision a variant is scored in: the fp32 variant in its source
    model's recorded one (``scoring_precision`` in its metrics.json, e.g. bf16
    when it was trained and evaluated under bf16 autocast), so that it keeps the
    source's threshold and verdicts; every other variant in its own precision."""
    if precision == "fp32":
        return saved_scoring(source)[1]
    return precision


def score_variant(folder: Path, scoring_precision: str, splits, set_names: list[str], device: torch.device,
                  args) -> dict:
    """Reload a saved variant and measure it: memory, accuracy, latency, throughput.
    Its threshold, scoring precision and metrics go to ``folder/metrics.json``
    (read by kd.predict and kd.evaluate), its ROC curves to ``folder/roc.png``."""
    model, tokenizer = load_classifier(folder, device=device)
    sets = splits.all_sets()
    tokenized = {name: tokenize(sets[name], tokenizer, args.max_length) for name in set_names}
    evaluation = final_evaluation(model, tokenized, args.batch_size, scoring_precision, folder)
    write_json(folder / "metrics.json", evaluation)
    threshold, sets = evaluation["threshold"], evaluation["sets"]
    test_urls = splits.test.urls
    row = {
        "parameters": parameter_count(model),
        # After the forwards above: on CPU bitsandbytes has swapped in its runtime layout.
        "memory_bytes": memory_footprint_bytes(model),
        "threshold": threshold,
        "scoring_precision": scoring_precision,
        **{m: sets["test"][m] for m in REPORT_METRICS},
        "latency_ms_batch1": measure_latency(model, tokenizer, test_urls, batch_size=1, repeats=args.latency_repeats,
                                             max_length=args.max_length),
        "throughput_urls_per_s_batch256": measure_throughput(
            model, tokenizer, test_urls[: args.throughput_urls], batch_size=256, max_length=args.max_length),
        "sets": sets,
    }
    del model
    gc.collect()
    return row


def add_relative_sizes(rows: list[dict]) -> None:
    """``percent_smaller_*`` of every row against the fp32 teacher (or the first row)."""
    reference = next((r for r in rows if r["role"] == "teacher" and r["precision"] == "fp32"), rows[0])
    for row in rows:
        row["percent_smaller_memory"] = 100 * (1 - row["memory_bytes"] / reference["memory_bytes"])
        row["percent_smaller_disk"] = 100 * (1 - row["disk_bytes"] / reference["disk_bytes"])


def report_table(rows: list[dict]) -> str:
    """The Markdown table of report.md: one row per variant."""
    columns = ("model", "precision", "params (M)", "disk (MB)", "memory (MB)", "accuracy", "F1", "ROC-AUC", "TPR@1%FPR",
               "latency b1 (ms)", "throughput b256 (URL/s)", "% smaller (memory)", "% smaller (disk)")
    return markdown_table(columns, [
        [r["role"], r["precision"], f"{r['parameters'] / 1e6:.2f}", f"{r['disk_bytes'] / 1e6:.1f}",
         f"{r['memory_bytes'] / 1e6:.1f}", f"{r['accuracy']:.4f}", f"{r['f1']:.4f}", f"{r['roc_auc']:.4f}",
         f"{r['tpr_at_1pct_fpr']:.4f}", f"{r['latency_ms_batch1']:.2f}", f"{r['throughput_urls_per_s_batch256']:.0f}",
         f"{r['percent_smaller_memory']:.1f}", f"{r['percent_smaller_disk']:.1f}"]
        for r in rows
    ])


def save_scatter(rows: list[dict], path: Path) -> None:
    """Memory footprint (MB, log scale) against test F1, one labelled point per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for r in rows:
        marker = "s" if r["role"] == "teacher" else "o"
        ax.scatter(r["memory_bytes"] / 1e6, r["f1"], marker=marker, s=40)
        ax.annotate(f"{r['role']} {r['precision']}", (r["memory_bytes"] / 1e6, r["f1"]),
                    textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("in-memory footprint (MB, log scale)")
    ax.set_ylabel("test F1")
    ax.set_title("size vs F1")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", required=True, help="fp32 student checkpoint folder (e.g. runs/student-minilm/best)")
    parser.add_argument("--teacher", help="fp32 teacher checkpoint folder; omit to report the student alone")
    parser.add_argument("--precisions", nargs="+", choices=QUANTIZED_PRECISIONS, metavar="P",
                        help=f"quantized student precisions, from {', '.join(QUANTIZED_PRECISIONS)} "
                             "(default: all that run on the device; dynamic-int8 is CPU only)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--out", default="runs/quantized", help="report and saved variants (default: runs/quantized)")
    parser.add_argument("--sets", nargs="+", default=["validation", "test"], metavar="SET",
                        help="sets to score (default: validation test; add e.g. a cross-data-set name)")
    parser.add_argument("--max-length", type=token_length, default=128, help="tokens per URL (default 128)")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="scoring batch size (default 256)")
    parser.add_argument("--latency-repeats", type=positive_int, default=50, help="timed batch-1 calls per variant (default 50)")
    parser.add_argument("--throughput-urls", type=positive_int, default=1024, help="test URLs scored for throughput (default 1024)")
    add_data_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.time()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    student = Path(args.student)
    for folder in (student, *([Path(args.teacher)] if args.teacher else [])):
        resolve_model_path(str(folder))  # no such folder, custom code: say so before the data is read
    with usage_errors():
        data_cfg = data_config_for(student, args)
    splits = build_splits(data_cfg)
    print(splits.report.summary())
    missing = [s for s in ("validation", "test", *args.sets) if s not in splits.all_sets()]
    if missing:
        raise UsageError(f"no set named {missing}; this data spec has {sorted(splits.all_sets())}")
    set_names = list(dict.fromkeys(["validation", "test", *args.sets]))

    variants = [("teacher", Path(args.teacher), p) for p in TEACHER_PRECISIONS] if args.teacher else []
    variants += [("student", student, p) for p in (*STUDENT_BASE_PRECISIONS,
                                                    *(args.precisions or default_quantized_precisions(device)))]
    out = Path(args.out)
    rows = []
    for role, source, precision in variants:
        print(f"{role} {precision}: quantize, save, reload, measure")
        folder = out / f"{role}-{precision}"
        disk_bytes = save_variant(source, precision, folder, device)
        rows.append({"role": role, "precision": precision, "folder": str(folder), "disk_bytes": disk_bytes,
                     **score_variant(folder, variant_scoring_precision(source, precision), splits, set_names,
                                     device, args)})
    add_relative_sizes(rows)

    report = {"device": device_description() if device.type == "cpu" else torch.cuda.get_device_name(device),
              "versions": library_versions(), "student": str(student), "teacher": args.teacher,
              "minutes": (time.time() - started) / 60, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", report)
    table = report_table(rows)
    (out / "report.md").write_text(f"Quantization report on {report['device']} (test split, threshold from validation)\n\n{table}\n")
    save_scatter(rows, out / "size_vs_f1.png")
    print(f"\n{table}\n\nwrote {out / 'report.json'}, {out / 'report.md'} and {out / 'size_vs_f1.png'} "
          f"in {report['minutes']:.1f} min on {report['device']}")
    return report


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="quantize.py"))
