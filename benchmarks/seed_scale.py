"""The seed-scale table: the MPNet-base pipeline's quantization report beside the
MiniLM pipeline's, one table, sizes relative to the fp32 base teacher.

Both reports come from ``quantize.py`` (``OUT/report.json``), each with the
cross-data-set set scored (``--sets validation test iscx-benign+phishtank``).
Writes ``OUT.md``, ``OUT.json`` and ``OUT-size_vs_f1.png``:

    python benchmarks/seed_scale.py --base runs/quantized-mpnet-base --minilm runs/quantized-minilm \\
        --out benchmarks/seed-scale-cpu

The Markdown ends with the lines issue 14 asks for, computed from the rows:
which variants are at least 51 % smaller in memory than the fp32 base
teacher, and what each costs in test F1 against the fp32 student.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kd.eval.report import write_json  # noqa: E402
from kd.eval.variants import add_relative_sizes, report_table, save_scatter  # noqa: E402

TARGET_PERCENT_SMALLER = 51.0
"""The seed's claim: the 4-bit student is 51 % smaller than its teacher."""


def merged_rows(base: dict, minilm: dict) -> list[dict]:
    """The base pipeline's rows, then the MiniLM pipeline's, each role prefixed by
    its pipeline; ``percent_smaller_*`` against the fp32 base teacher (the first row)."""
    rows = [dict(r, pipeline="MPNet-base") for r in base["rows"]] + [dict(r, pipeline="MiniLM") for r in minilm["rows"]]
    add_relative_sizes(rows)  # the first fp32 teacher: the base one
    for row in rows:
        row["role"] = f"{row['pipeline']} {row['role']}"
    return rows


def summary_lines(rows: list[dict]) -> list[str]:
    """Which base-pipeline student variants are ≥ 51 % smaller than the fp32 base
    teacher in memory, and their test F1 against the fp32 student and the teacher."""
    by_key = {(r["role"], r["precision"]): r for r in rows}
    teacher, student = by_key["MPNet-base teacher", "fp32"], by_key["MPNet-base student", "fp32"]
    lines = [f"- fp32 student: test F1 {student['f1']:.4f} = {100 * student['f1'] / teacher['f1']:.2f} % of the fp32 "
             f"base teacher's {teacher['f1']:.4f}."]
    for row in rows:
        if row["pipeline"] != "MPNet-base" or not row["role"].endswith("student") or row["precision"] == "fp32":
            continue
        verdict = "at least" if row["percent_smaller_memory"] >= TARGET_PERCENT_SMALLER else "NOT"
        lines.append(
            f"- student {row['precision']}: {row['percent_smaller_memory']:.1f} % smaller in memory than the fp32 "
            f"teacher ({verdict} {TARGET_PERCENT_SMALLER:.0f} %); test F1 {row['f1']:.4f}, "
            f"{100 * (row['f1'] - student['f1']):+.2f} F1 points against the fp32 student.")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="quantize.py output folder of the MPNet-base pipeline")
    parser.add_argument("--minilm", required=True, help="quantize.py output folder of the MiniLM pipeline")
    parser.add_argument("--out", required=True, help="output path without extension")
    args = parser.parse_args(argv)
    base, minilm = (json.loads((Path(folder) / "report.json").read_text()) for folder in (args.base, args.minilm))
    rows = merged_rows(base, minilm)
    out = Path(args.out)
    write_json(out.with_suffix(".json"), {"device": base["device"], "versions": base["versions"], "rows": rows,
                                          "quantize_minutes": {"MPNet-base": base["minutes"], "MiniLM": minilm["minutes"]}})
    save_scatter(rows, out.with_name(out.name + "-size_vs_f1.png"))
    text = [f"# Seed scale on {base['device']}", "",
            "Test split (threshold from validation), the cross-data-set set iscx-benign+phishtank, "
            "sizes against the fp32 MPNet-base teacher; training minutes are the source checkpoint's.", "",
            report_table(rows), "", *summary_lines(rows), ""]
    out.with_suffix(".md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
