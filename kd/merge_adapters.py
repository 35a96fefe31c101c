"""Merge trained LoRA adapters into a full-precision copy of their base model.

    python -m kd.merge_adapters ADAPTER_DIR OUT_DIR [--dtype bfloat16]

OUT_DIR is a plain Hugging Face folder (safetensors, tokenizer, and
``generative.json`` with the prompt format) that loads without peft. It is
written under a temporary name and renamed into place when complete; an
OUT_DIR that overlaps ADAPTER_DIR, or that holds anything but an earlier
merged model, is refused.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from kd.errors import UsageError, run_cli
from kd.train.outputs import check_apart, publish_folder
from models.lora import ADAPTER_CONFIG, META_FILE, is_adapter_folder, merge_adapters

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kd.merge_adapters", description=__doc__.split("\n")[0])
    parser.add_argument("adapter_dir", help="folder written by save_adapters (adapters + generative.json)")
    parser.add_argument("out_dir", help="where to write the merged model")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype of the saved weights")
    args = parser.parse_args(argv)
    if not is_adapter_folder(args.adapter_dir):  # a merged folder has generative.json too, but no adapters
        raise UsageError(f"{args.adapter_dir} is not an adapter folder (it needs {ADAPTER_CONFIG} and {META_FILE}): "
                         "name a folder written by save_adapters (a QLoRA run's best/ or last/)")
    check_apart(args.out_dir, "OUT_DIR", {"ADAPTER_DIR": args.adapter_dir})
    out = Path(args.out_dir)
    if out.is_dir() and any(out.iterdir()) and not (out / META_FILE).is_file():
        raise UsageError(f"{out} exists and holds no merged model ({META_FILE}); name a new OUT_DIR")
    publish_folder(out, lambda tmp: merge_adapters(args.adapter_dir, tmp, dtype=DTYPES[args.dtype]))
    print(f"merged model written to {out}")


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="python -m kd.merge_adapters"))
