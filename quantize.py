"""Quantize a student (and its teacher) and report size, speed and accuracy side by side.

    python quantize.py --student runs/student-minilm/best --teacher runs/teacher-minilm/best
    python quantize.py --student S --teacher T --precisions nf4 int8 --out runs/quantized
    python quantize.py --student S --precisions nf4 onnx-int8 --sets validation esdaung --test-set esdaung

For every variant — the teacher in fp32 and bf16, the student in fp32, bf16
and each requested quantized precision — the model is loaded (quantized on
the way; ``onnx-int8``: exported to ONNX with int8 weights, as ``kd.export
--int8`` does, and scored with ONNX Runtime), saved to ``OUT/<role>-<precision>/`` before its first forward,
loaded back from that folder (so what is measured is what was saved), and
measured on the current device:

- parameters, size on disk of the saved folder, in-memory footprint
  (weights, buffers and quantization state);
- accuracy, F1, ROC-AUC and TPR at 1 % FPR on the test split (or the set
  named by ``--test-set``, e.g. a held-out source when the split has no test part), at a
  threshold chosen on the validation split, scored in the
  variant's precision (the fp32 variant in the source's recorded
  ``scoring_precision``, so it reproduces the training run's threshold).
  ``--threshold f1`` (default) takes each variant's max-F1 threshold;
  ``--threshold source-fpr`` keeps the source's operating point: each variant's
  threshold flags the same fraction of the validation legitimate URLs as its
  source did at its deployed threshold. Where the F1 curve is flat near its
  top (validation from other collections), re-optimising F1 can move a
  quantized copy's threshold, and its false-alarm rate, far more than its
  scores moved;
- median latency at batch 1 and throughput at batch 256, end to end
  (normalise, tokenise, forward);
- F1 and ROC-AUC on every further set named in ``--sets`` (cross-data-set ones);
- "% smaller than the fp32 teacher" in memory and on disk;
- the minutes the source checkpoint took to train (from its metrics.json).

The data split is the student checkpoint's own (its run_info.json), so no
test URL was seen in training. Each saved folder gets a ``metrics.json`` with
its threshold, which ``python -m kd.predict --model OUT/<role>-<precision>``
then uses. Writes OUT/report.json, OUT/report.md and OUT/size_vs_f1.png.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from kd.argtypes import positive_int, token_length
from kd.data.splits import build_splits
from kd.errors import UsageError, run_cli, usage_errors
from kd.eval.inference import check_max_length
from kd.eval.variants import (
    ONNX_INT8,
    STUDENT_BASE_PRECISIONS,
    TEACHER_PRECISIONS,
    add_relative_sizes,
    default_quantized_precisions,
    report_table,
    save_scatter,
    save_variant,
    score_variant,
    training_minutes,
    variant_scoring_precision,
)
from kd.evaluate import add_data_arguments, data_config_for
from kd.eval.report import write_json
from kd.eval.scoring import saved_validation_fpr
from kd.train.outputs import check_apart, publish_folder
from kd.train.runinfo import device_description, library_versions
from models.quantized import QUANTIZED_PRECISIONS


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", required=True, help="fp32 student checkpoint folder (e.g. runs/student-minilm/best)")
    parser.add_argument("--teacher", help="fp32 teacher checkpoint folder; omit to report the student alone")
    parser.add_argument("--precisions", nargs="+", choices=(*QUANTIZED_PRECISIONS, ONNX_INT8), metavar="P",
                        help=f"quantized student precisions, from {', '.join((*QUANTIZED_PRECISIONS, ONNX_INT8))} "
                             "(default: all that run on the device; dynamic-int8 and onnx-int8 are CPU only, "
                             "onnx-int8 needs pip install '.[onnx]')")
    parser.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--out", default="runs/quantized", help="report and saved variants (default: runs/quantized)")
    parser.add_argument("--sets", nargs="+", default=["validation", "test"], metavar="SET",
                        help="sets to score (default: validation test; add e.g. a cross-data-set name)")
    parser.add_argument("--test-set", default="test", metavar="SET",
                        help="the set whose metrics, latency and throughput the report's columns give (default: test)")
    parser.add_argument("--threshold", choices=("f1", "source-fpr"), default="f1",
                        help="f1: each variant's threshold maximises its validation F1 (default); source-fpr: each "
                             "variant's threshold gives the validation false-positive rate its source model had "
                             "(read from the source's metrics.json), so quantization keeps the false-alarm rate")
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
    check_apart(args.out, "--out", {"--student": args.student, "--teacher": args.teacher})
    for folder in (student, *([Path(args.teacher)] if args.teacher else [])):
        check_max_length(folder, args.max_length)  # no such folder, custom code, too long: say so before the data is read
    with usage_errors():
        data_cfg = data_config_for(student, args)
    splits = build_splits(data_cfg)
    print(splits.report.summary())
    missing = [s for s in ("validation", args.test_set, *args.sets) if s not in splits.all_sets()]
    if missing:
        raise UsageError(f"no set named {missing}; this data spec has {sorted(splits.all_sets())} (--test-set names the report's)")
    set_names = list(dict.fromkeys(["validation", args.test_set, *args.sets]))
    precisions = args.precisions or default_quantized_precisions(device)
    if ONNX_INT8 in precisions and device.type != "cpu":
        raise UsageError(f"{ONNX_INT8} runs on the CPU (ONNX Runtime's CPU provider): drop it or use --device cpu")

    variants = [("teacher", Path(args.teacher), p) for p in TEACHER_PRECISIONS] if args.teacher else []
    variants += [("student", student, p) for p in (*STUDENT_BASE_PRECISIONS, *precisions)]
    sources = dict.fromkeys(source for _, source, _ in variants)  # each source's metrics.json read once
    target_fpr = ({source: saved_validation_fpr(source, "--threshold source-fpr") for source in sources}
                  if args.threshold == "source-fpr" else {})
    out = Path(args.out)
    rows = []
    for role, source, precision in variants:
        print(f"{role} {precision}: quantize, save, reload, measure")
        folder = out / f"{role}-{precision}"
        row = {"role": role, "precision": precision, "folder": str(folder), "training_minutes": training_minutes(source)}

        def save_and_score(tmp: Path) -> None:  # the folder appears only with its metrics.json (threshold)
            row["disk_bytes"] = save_variant(source, precision, tmp, device)
            row.update(score_variant(tmp, variant_scoring_precision(source, precision), splits, set_names, device,
                                     max_length=args.max_length, batch_size=args.batch_size,
                                     latency_repeats=args.latency_repeats, throughput_urls=args.throughput_urls,
                                     test_set=args.test_set, validation_fpr=target_fpr.get(source)))

        publish_folder(folder, save_and_score)
        rows.append(row)
    add_relative_sizes(rows)

    report = {"device": device_description() if device.type == "cpu" else torch.cuda.get_device_name(device),
              "versions": library_versions(), "student": str(student), "teacher": args.teacher, "threshold": args.threshold,
              "minutes": (time.time() - started) / 60, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", report)
    table = report_table(rows)
    rule = "max F1" if args.threshold == "f1" else "its source's false-positive rate"
    (out / "report.md").write_text(
        f"Quantization report on {report['device']} ({args.test_set} set, threshold from validation: {rule})\n\n{table}\n")
    save_scatter(rows, out / "size_vs_f1.png")
    print(f"\n{table}\n\nwrote {out / 'report.json'}, {out / 'report.md'} and {out / 'size_vs_f1.png'} "
          f"in {report['minutes']:.1f} min on {report['device']}")
    return report


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="quantize.py"))
