"""Parity of the ONNX exports (``python -m kd.export``, fp32 and ``--int8``) with the
torch fp32 model they came from, on a trained classifier's own validation and test
splits (rebuilt from its run_info.json, as kd.evaluate does).

For each export: the largest difference of the phishing probability from torch
fp32, the share of verdicts that agree with torch fp32 at the model's saved
threshold (metrics.json, the one kd.predict applies), and F1 at that threshold.

    python benchmarks/onnx_parity.py --model runs/teacher-minilm/best --out benchmarks/onnx-parity.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kd.data.batching import prepare_data  # noqa: E402
from kd.eval.inference import phishing_column, predict_tokenized, probabilities  # noqa: E402
from kd.eval.metrics import binary_metrics  # noqa: E402
from kd.eval.report import markdown_table  # noqa: E402
from kd.eval.scoring import saved_scoring  # noqa: E402
from kd.evaluate import data_config_for  # noqa: E402
from kd.export import export_folder  # noqa: E402
from models.onnx import load_onnx_classifier  # noqa: E402
from models.quantized import load_classifier  # noqa: E402

SETS = ("validation", "test")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a trained fp32 or bf16 classifier folder with run_info.json")
    parser.add_argument("--out", type=Path, help="results JSON (+ .md beside it)")
    parser.add_argument("--sets", nargs="+", default=list(SETS),
                        help="sets of the model's data spec to score (default: validation test; e.g. validation esdaung "
                             "for a kd.benchmark fold, whose split has no test part)")
    args = parser.parse_args(argv)
    sets = args.sets
    data_args = argparse.Namespace(config=None, set=[], source=None, test_source=None, data_dir=None)
    model, tokenizer = load_classifier(args.model, "fp32", "cpu")
    _, tokenized = prepare_data(data_config_for(args.model, data_args), tokenizer, 128)
    threshold, _, _ = saved_scoring(args.model)
    column = phishing_column(model)
    reference = {name: probabilities(predict_tokenized(model, tokenized[name]), column) for name in sets}
    rows = {"torch fp32": {name: {"f1": binary_metrics(tokenized[name].labels, reference[name], threshold)["f1"]}
                           for name in sets}}
    with tempfile.TemporaryDirectory(prefix="kd-onnx-parity-") as tmp:
        for precision in ("fp32", "int8"):
            folder = export_folder(args.model, Path(tmp) / precision, int8=precision == "int8")
            session, _ = load_onnx_classifier(folder)
            rows[f"ONNX Runtime {precision}"] = row = {}
            for name in sets:
                probs = probabilities(predict_tokenized(session, tokenized[name]), column)
                row[name] = {"f1": binary_metrics(tokenized[name].labels, probs, threshold)["f1"],
                             "max_abs_probability_difference": float(np.abs(probs - reference[name]).max()),
                             "verdict_agreement": float(np.mean((probs >= threshold) == (reference[name] >= threshold))),
                             "n": len(probs)}
            row["onnx_mb"] = (folder / "model.onnx").stat().st_size / 2**20
    table = markdown_table(
        ("variant", "set", "URLs", "F1", "max |Δp| vs torch fp32", "verdicts as torch fp32"),
        [[variant, name, str(len(tokenized[name])), f"{row[name]['f1']:.4f}",
          f"{row[name].get('max_abs_probability_difference', 0):.2e}", f"{row[name].get('verdict_agreement', 1):.2%}"]
         for variant, row in rows.items() for name in sets],
        right=[False, False, True, True, True, True])
    print(table)
    results = {"model": str(args.model), "threshold": threshold, "variants": rows}
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        sizes = ", ".join(f"{v}: {r['onnx_mb']:.1f} MB" for v, r in rows.items() if "onnx_mb" in r)
        args.out.with_suffix(".md").write_text(
            f"# ONNX export parity\n\n{args.model}, threshold {threshold:.4f} (its metrics.json); model.onnx sizes "
            f"{sizes}.\n\n{table}\n")
    return results


if __name__ == "__main__":
    main()
