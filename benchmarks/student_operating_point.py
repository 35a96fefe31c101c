"""Each leave-one-source-out student against its teacher on the held-out source, at two
operating points (issue 24):

    python benchmarks/student_operating_point.py runs/multisource --out benchmarks/student-operating-point-cpu

- ``f1``: the student's own threshold, the one maximising its validation F1
  (``distill.threshold=f1``, how the students were trained);
- ``teacher-fpr``: the threshold giving the teacher's validation false-positive rate
  (``distill.threshold=teacher-fpr``), computed from the same validation scores with
  :func:`kd.eval.metrics.threshold_at_fpr`, as training computes it. The model is the same.

It reads the per-URL probabilities the training runs wrote (``RUNS/teacher-loso-S/scores.csv.gz``,
``RUNS/student-loso-S/scores.csv.gz``) and pairs student and teacher on the same held-out URLs
(:func:`kd.eval.compare.paired_metrics`: registrable domains resampled). Writes OUT.md and OUT.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kd.data.urls import registrable_domain  # noqa: E402
from kd.eval.bootstrap import cluster_index  # noqa: E402
from kd.eval.compare import paired_metrics  # noqa: E402
from kd.eval.metrics import binary_metrics, false_positive_rate, threshold_at_fpr  # noqa: E402
from kd.eval.report import markdown_table, write_json  # noqa: E402
from kd.eval.scoring import SCORES_FILE, read_scores, saved_scoring, saved_validation_fpr  # noqa: E402

SOURCES = ("hannousse", "iscx_phishtank", "esdaung", "phishstorm")


def fold_rows(runs: Path, source: str, n_boot: int) -> list[dict]:
    """Both operating points of one fold: F1, FPR and the paired F1 difference from the teacher."""
    teacher_run, student_run = runs / f"teacher-loso-{source}", runs / f"student-loso-{source}"
    teacher, student = read_scores(teacher_run / SCORES_FILE), read_scores(student_run / SCORES_FILE)
    held_t, held_s = teacher[source], student[source]
    if held_t["urls"] != held_s["urls"]:
        raise ValueError(f"{source}: the teacher and the student scored different held-out URLs")
    labels = held_s["labels"]
    clusters = cluster_index([registrable_domain(u) for u in held_s["urls"]])
    teacher_threshold = saved_scoring(teacher_run / "best")[0]
    teacher_fpr = saved_validation_fpr(teacher_run / "best", "teacher-fpr")
    validation = student["validation"]
    thresholds = {
        "f1": saved_scoring(student_run / "best")[0],
        "teacher-fpr": threshold_at_fpr(validation["labels"], validation["probs"], teacher_fpr),
    }
    teacher_metrics = binary_metrics(labels, held_t["probs"], teacher_threshold)
    rows = []
    for rule, threshold in thresholds.items():
        roc, f1 = paired_metrics(labels, clusters, held_t["probs"], held_s["probs"], [teacher_threshold], [threshold],
                                 n_boot=n_boot)
        student_metrics = binary_metrics(labels, held_s["probs"], threshold)
        rows.append({"source": source, "rule": rule, "threshold": threshold, "teacher_threshold": teacher_threshold,
                     "teacher_validation_fpr": teacher_fpr, "teacher_f1": f1["reference"], "student_f1": f1["value"],
                     "f1_kept_percent": 100 * f1["value"] / f1["reference"], "f1_difference": f1,
                     "roc_auc_difference": roc, "teacher_fpr": false_positive_rate(teacher_metrics["confusion_matrix"]),
                     "student_fpr": false_positive_rate(student_metrics["confusion_matrix"]),
                     "student_tpr": student_metrics["recall"], "teacher_tpr": teacher_metrics["recall"],
                     "n_urls": int(len(labels)), "n_domains": int(np.max(clusters)) + 1})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, help="folder with teacher-loso-SOURCE and student-loso-SOURCE runs")
    parser.add_argument("--out", required=True, help="output path without extension")
    parser.add_argument("--n-boot", type=int, default=200, help="domain-bootstrap replicates (default 200)")
    args = parser.parse_args(argv)
    rows = [row for source in SOURCES for row in fold_rows(args.runs, source, args.n_boot)]
    table = markdown_table(
        ("held-out source", "URLs", "threshold rule", "student threshold", "F1 teacher", "F1 student", "F1 kept",
         "F1 difference [95 % CI]", "FPR teacher / student", "TPR teacher / student"),
        [[r["source"], f"{r['n_urls']:,}", r["rule"], f"{r['threshold']:.3f}", f"{r['teacher_f1']:.4f}",
          f"{r['student_f1']:.4f}", f"{r['f1_kept_percent']:.1f} %",
          f"{r['f1_difference']['difference']:+.4f} [{r['f1_difference']['low']:+.4f}, {r['f1_difference']['high']:+.4f}]",
          f"{r['teacher_fpr']:.3f} / {r['student_fpr']:.3f}", f"{r['teacher_tpr']:.3f} / {r['student_tpr']:.3f}"]
         for r in rows],
        right=[False, True, False, True, True, True, True, True, True, True])
    out = Path(args.out)
    write_json(out.with_suffix(".json"), {"runs": str(args.runs), "n_boot": args.n_boot, "rows": rows})
    out.with_suffix(".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
