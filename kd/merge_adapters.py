"""Merge trained LoRA adapters into a full-precision copy of their base model.

    python -m kd.merge_adapters ADAPTER_DIR OUT_DIR [--dtype bfloat16]

OUT_DIR is a plain Hugging Face folder (safetensors, tokenizer, and
``generative.json`` with the prompt format) that loads without peft.
"""
from __future__ import annotations

import argparse
import sys

import torch

from kd.errors import UsageError, run_cli
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
    out = merge_adapters(args.adapter_dir, args.out_dir, dtype=DTYPES[args.dtype])
    print(f"merged model written to {out}")


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="python -m kd.merge_adapters"))
