"""The quantization report's variants: each saved in its precision, reloaded from
that folder and measured (size, memory, accuracy at the validation threshold,
latency, throughput), then tabulated and plotted (quantize.py runs them)."""
from __future__ import annotations

import gc
import json
import math
import shutil
from pathlib import Path

import torch

from kd.data.batching import tokenize
from kd.eval.inference import scoring_model
from kd.eval.model_card import describe_folder
from kd.eval.measure import measure_latency, measure_throughput, memory_footprint_bytes, parameter_count, size_on_disk_bytes
from kd.eval.metrics import false_positive_rate
from kd.eval.report import markdown_table, write_json
from kd.eval.scoring import final_evaluation, saved_scoring
from models.quantized import QUANTIZED_PRECISIONS, load_classifier, save_quantized

ONNX_INT8 = "onnx-int8"
"""The ONNX Runtime row: the student exported to ONNX with int8 weights (``kd.export --int8``), CPU only."""
TEACHER_PRECISIONS = ("fp32", "bf16")
STUDENT_BASE_PRECISIONS = ("fp32", "bf16")
REPORT_METRICS = ("accuracy", "f1", "roc_auc", "tpr_at_1pct_fpr")
RUN_INFO = "run_info.json"


def default_quantized_precisions(device: torch.device) -> list[str]:
    """bitsandbytes NF4, FP4 and LLM.int8 everywhere; torch dynamic int8 on CPU only; ONNX Runtime
    int8 on CPU when the optional ``onnx`` packages are installed."""
    import importlib.util

    cpu_only = ("dynamic-int8", ONNX_INT8) if importlib.util.find_spec("onnxruntime") else ("dynamic-int8",)
    return [p for p in (*QUANTIZED_PRECISIONS, ONNX_INT8) if p not in cpu_only or device.type == "cpu"]


def save_variant(source: Path, precision: str, folder: Path, device: torch.device) -> int:
    """Load ``source`` in ``precision`` and save it to ``folder`` before any forward
    (bitsandbytes repacks 4-bit weights on the first CPU forward; see save_quantized).
    ``folder`` is new or empty: quantize.py writes it under a temporary name
    (:func:`kd.train.outputs.publish_folder`). The source's ``run_info.json`` comes
    along. Returns the bytes saved (weights, config, tokenizer)."""
    if precision == ONNX_INT8:  # the export carries the source's run_info.json itself
        from kd.eval.onnx_folder import write_onnx_folder

        write_onnx_folder(Path(source), folder, int8=True)
        return size_on_disk_bytes(folder)
    model, tokenizer = load_classifier(source, precision, device)
    save_quantized(model, tokenizer, folder, precision)
    del model
    gc.collect()
    size = size_on_disk_bytes(folder)
    if (Path(source) / RUN_INFO).is_file():  # the data spec: kd.evaluate rebuilds the split from it
        shutil.copyfile(Path(source) / RUN_INFO, folder / RUN_INFO)
    return size


def variant_scoring_precision(source: Path, precision: str) -> str:
    """The precision a variant is scored in: the fp32 variant in its source
    model's recorded one (``scoring_precision`` in its metrics.json, e.g. bf16
    when it was trained and evaluated under bf16 autocast), so that it keeps the
    source's threshold and verdicts; every other variant in its own precision."""
    if precision == "fp32":
        return saved_scoring(source)[1]
    return precision


def score_variant(folder: Path, scoring_precision: str, splits, set_names: list[str], device: torch.device, *,
                  max_length: int, batch_size: int, latency_repeats: int, throughput_urls: int, test_set: str = "test",
                  validation_fpr: float | None = None) -> dict:
    """Reload a saved variant and measure it: memory, accuracy, latency, throughput.
    Its threshold maximises validation F1, or with ``validation_fpr`` flags that
    fraction of the validation legitimate URLs (:func:`kd.eval.scoring.saved_validation_fpr`).
    Its threshold, scoring precision and metrics go to ``folder/metrics.json``
    (read by kd.predict and kd.evaluate), ``config.json`` and the model card, its ROC curves to ``folder/roc.png``. It is
    scored as kd.predict scores it (``kd.eval.inference.scoring_model``); its size
    is the loaded model's. An ONNX folder is scored through ONNX Runtime; its
    parameters are its source's (quantization keeps them all) and its memory is
    the bytes of ``model.onnx``, whose weights the session holds. The report's
    metrics, latency and throughput are on ``test_set``."""
    from models.onnx import ONNX_FILE, is_onnx_folder, load_onnx_classifier

    onnx = is_onnx_folder(folder)
    model, tokenizer = load_onnx_classifier(folder) if onnx else load_classifier(folder, device=device)
    scorer = model if onnx else scoring_model(model)
    examples = splits.all_sets()
    tokenized = {name: tokenize(examples[name], tokenizer, max_length) for name in set_names}
    evaluation = final_evaluation(scorer, tokenized, batch_size, scoring_precision, folder, validation_fpr=validation_fpr)
    write_json(folder / "metrics.json", evaluation)
    describe_folder(folder)
    threshold, sets = evaluation["threshold"], evaluation["sets"]
    test_urls = examples[test_set].urls
    if onnx:
        source = json.loads((folder / "onnx_export.json").read_text())["source"]
        parameters, memory = parameter_count(load_classifier(source, "fp32", "cpu")[0]), (folder / ONNX_FILE).stat().st_size
    else:
        # After the forwards above: on CPU bitsandbytes has swapped in its runtime layout.
        parameters, memory = parameter_count(model), memory_footprint_bytes(model)
    row = {
        "parameters": parameters,
        "memory_bytes": memory,
        "threshold": threshold,
        "threshold_rule": evaluation["threshold_rule"],
        "validation_fpr": false_positive_rate(sets["validation"]["confusion_matrix"]),
        "scoring_precision": scoring_precision,
        "test_set": test_set,
        **{m: sets[test_set][m] for m in REPORT_METRICS},
        "latency_ms_batch1": measure_latency(scorer, tokenizer, test_urls, batch_size=1, repeats=latency_repeats,
                                             max_length=max_length),
        "throughput_urls_per_s_batch256": measure_throughput(
            scorer, tokenizer, test_urls[:throughput_urls], batch_size=256, max_length=max_length),
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


def training_minutes(source: Path) -> float | None:
    """Minutes the source checkpoint's training run took (``train_seconds`` in
    its ``metrics.json``, written at the end of training), or ``None``."""
    metrics = Path(source) / "metrics.json"
    seconds = json.loads(metrics.read_text()).get("train_seconds") if metrics.is_file() else None
    return None if seconds is None else seconds / 60


def cross_set_names(rows: list[dict]) -> list[str]:
    """The scored sets beyond validation and the report's test set (cross-data-set ones), in order."""
    return [name for name in rows[0]["sets"] if name not in ("validation", rows[0].get("test_set", "test"))]


def report_table(rows: list[dict]) -> str:
    """The Markdown table of report.md: one row per variant; its threshold and the
    false-positive rate that gives on validation, the test split's metrics, then F1 and ROC-AUC on each cross-data-set set, then speed, size
    and the source's training time."""
    extra = cross_set_names(rows)
    columns = ("model", "precision", "params (M)", "disk (MB)", "memory (MB)", "threshold", "validation FPR", "accuracy",
               "F1", "ROC-AUC", "TPR@1%FPR",
               *[f"{name} {metric}" for name in extra for metric in ("F1", "ROC-AUC")],
               "latency b1 (ms)", "throughput b256 (URL/s)", "% smaller (memory)", "% smaller (disk)", "training (min)")
    return markdown_table(columns, [
        [r["role"], r["precision"], f"{r['parameters'] / 1e6:.2f}", f"{r['disk_bytes'] / 1e6:.1f}",
         f"{r['memory_bytes'] / 1e6:.1f}", f"{r['threshold']:.4f}",
         "-" if r.get("validation_fpr") is None else f"{r['validation_fpr']:.4f}",  # reports written before it
         f"{r['accuracy']:.4f}", f"{r['f1']:.4f}", f"{r['roc_auc']:.4f}",
         f"{r['tpr_at_1pct_fpr']:.4f}",
         *[f"{r['sets'][name][metric]:.4f}" for name in extra for metric in ("f1", "roc_auc")],
         f"{r['latency_ms_batch1']:.2f}", f"{r['throughput_urls_per_s_batch256']:.0f}",
         f"{r['percent_smaller_memory']:.1f}", f"{r['percent_smaller_disk']:.1f}",
         "-" if r.get("training_minutes") is None else f"{r['training_minutes']:.1f}"]
        for r in rows
    ])


def label_rows(points: list[tuple[float, float]]) -> list[int]:
    """For points ``(memory MB, F1)`` in plotting order, the row each one's label
    takes: 0 beside the point, 1 one line below, ... A point that lands where an
    earlier one did (memory within 25 % on the log axis, F1 within 3 % of the
    plotted span: e.g. bf16 and dynamic-int8 with the same F1 and size) moves its
    label down a line, so no two labels are drawn over each other."""
    f1s = [f1 for _, f1 in points]
    span = max(max(f1s) - min(f1s), 1e-6)
    rows = []
    for i, (mb, f1) in enumerate(points):
        taken = {rows[j] for j, (other_mb, other_f1) in enumerate(points[:i])
                 if abs(math.log(mb / other_mb)) < math.log(1.25) and abs(f1 - other_f1) < 0.03 * span}
        rows.append(min(set(range(len(taken) + 1)) - taken))
    return rows


def save_scatter(rows: list[dict], path: Path) -> None:
    """Memory footprint (MB, log scale) against test F1, one labelled point per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    points = [(r["memory_bytes"] / 1e6, r["f1"]) for r in rows]
    for r, (mb, f1), line in zip(rows, points, label_rows(points)):
        ax.scatter(mb, f1, marker="s" if r["role"] == "teacher" else "o", s=40)
        ax.annotate(f"{r['role']} {r['precision']}", (mb, f1), textcoords="offset points", xytext=(5, 4 - 10 * line),
                    fontsize=8)
    ax.set_xscale("log")
    # Plain megabytes (20, 30, 50) on the log axis instead of 2x10^1; other minor ticks unlabelled.
    plain = FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "1235" else "")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.set_xlabel("in-memory footprint (MB, log scale)")
    ax.set_ylabel("test F1")
    ax.set_title("size vs F1")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
