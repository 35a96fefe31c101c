"""Export a saved classifier to ONNX for CPU serving with ONNX Runtime.

    python -m kd.export --model runs/student/best --out runs/student-onnx
    python -m kd.export --model runs/student/best --out runs/student-onnx-int8 --int8

OUT holds ``model.onnx`` (dynamic batch and sequence axes; with ``--int8``,
ONNX Runtime's dynamic int8 quantization of it), the model's ``config.json``
and tokenizer, ``onnx_export.json`` (precision, opset, source) and, where the
source has them, its scoring record (metrics.json, run_info.json), so that
``python -m kd.predict --model OUT`` applies the same threshold, with a model
card (README.md) generated for the export from them. OUT is written under a temporary name and renamed into place when
complete, and refused if it overlaps the source folder. Needs the optional
packages of ``pip install .[onnx]``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kd.errors import UsageError, run_cli
from kd.eval.onnx_folder import write_onnx_folder
from kd.train.outputs import check_apart, publish_folder


def export_folder(model_dir: str | Path, out_dir: str | Path, *, int8: bool = False) -> Path:
    """Export the fp32 or bf16 classifier folder ``model_dir`` (a bf16 one is
    exported in fp32) to the ONNX folder ``out_dir`` described in the module
    docstring; returns ``out_dir``. A quantized folder (bitsandbytes or torch
    dynamic int8) is refused: export the fp32 checkpoint it came from."""
    from models.paths import check_model_folder, resolve_model_path

    source = Path(resolve_model_path(str(model_dir)))
    check_model_folder(source)
    check_apart(out_dir, "--out", {"--model": source})
    return publish_folder(Path(out_dir), lambda folder: write_onnx_folder(source, folder, int8=int8))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kd.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, metavar="FOLDER",
                        help="fp32 or bf16 classifier folder (save_pretrained + tokenizer), or packaged:minilm")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="ONNX folder to write")
    parser.add_argument("--int8", action="store_true",
                        help="quantize the weights to int8 with onnxruntime.quantization.quantize_dynamic")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import onnxruntime  # noqa: F401  (the exporter needs onnx and onnxscript too; all three come together)
    except ImportError as err:
        raise UsageError(f"kd.export needs the optional ONNX packages ({err}): pip install '.[onnx]'") from err
    out = export_folder(args.model, args.out, int8=args.int8)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="python -m kd.export"))
