"""Fine-tune a phishing-URL teacher (any Hugging Face encoder) with the project's loop.

    python train_teacher.py                                  # offline preset: packaged MiniLM-L6, Hannousse
    python train_teacher.py --config bert-base-uncased       # the BERT-base teacher (hub + GPU)
    python train_teacher.py --set train.epochs=2 --set data.split=random
    python train_teacher.py --out runs/teacher --resume      # continue an interrupted run

Writes OUT/best and OUT/last (save_pretrained folders with the tokenizer,
run_info.json and metrics.json), OUT/results.json, OUT/roc.png, OUT/splits.csv
and TensorBoard scalars under OUT/tb.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from kd.classifier import (
    build_classifier,
    cross_entropy_sum,
    finish_run,
    load_tokenizer,
    make_saver,
    make_validator,
    prepare_data,
    run_info,
    set_seed,
    start_run,
)
from kd.config import RunConfig, load_config
from kd.distributed import barrier, default_device, init_distributed
from kd.errors import run_cli, usage_errors
from kd.loop import autocast_dtype, train
from kd.runinfo import claim_run_folder, resolved_config
from kd.sources import SourceSpec
from models.paths import resolve_model_path


def add_common_arguments(parser: argparse.ArgumentParser, default_config: str) -> None:
    """Options every training recipe takes."""
    parser.add_argument("--config", default=default_config, help=f"YAML preset: a file or a name under configs/ (default: {default_config})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config field, e.g. train.lr=3e-5 (repeatable)")
    parser.add_argument("--out", help="run folder (default: the config's out_dir)")
    parser.add_argument("--data-dir", help="folder that relative source paths resolve against (default: ../shared/data or ./data)")
    parser.add_argument("--source", action="append", metavar="PATH[:k=v,...]", help="training source(s), replacing the config's; e.g. iscx_url2016/Benign_list_big_final.csv:label=legitimate")
    parser.add_argument("--epochs", type=int, help="shortcut for --set train.epochs=N")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last (optimizer, scheduler, RNG and data order restored); "
                        "refused if the configuration or the data files differ from the run's")
    parser.add_argument("--allow-changed", type=lambda text: [k.strip() for k in text.split(",") if k.strip()], default=[],
                        metavar="KEY,...", help="with --resume: accept these changed config keys, e.g. train.epochs,train.max_steps "
                        "(the optimizer and scheduler keep their saved state)")


def config_from_args(args, cls=RunConfig):
    overrides = list(args.set)
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.out:
        overrides.append(f"out_dir={args.out}")
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    cfg = load_config(cls, args.config, overrides)
    if args.source:
        sources = [SourceSpec.parse(s).__dict__ for s in args.source]
        if isinstance(cfg.data, dict):  # a student's overrides of its teacher's data section
            cfg.data["sources"] = sources
        else:
            cfg.data.sources = sources
    return cfg


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, "teacher-minilm")
    args = parser.parse_args(argv)
    with usage_errors():
        cfg = config_from_args(args)
    resolve_model_path(cfg.model.name_or_path)  # no such folder, custom code: before the run folder is claimed
    with claim_run_folder(Path(cfg.out_dir), resume=args.resume, allowed=args.allow_changed,
                          current=resolved_config(cfg), data_cfg=cfg.data):
        return run(cfg, resume=args.resume)


def run(cfg: RunConfig, resume: bool = False, on_step=None) -> dict:
    started = time.time()
    dist_info = init_distributed()
    device = default_device(dist_info)
    set_seed(cfg.train.seed)
    log = print if dist_info.is_main else (lambda *a, **k: None)
    out_dir = Path(cfg.out_dir)
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    splits, tokenized = prepare_data(cfg.data, tokenizer, cfg.model.max_length, log)
    if dist_info.is_main and not resume:
        start_run(cfg, out_dir, splits)
    barrier(dist_info)
    model = build_classifier(cfg.model).to(device)
    amp = autocast_dtype(cfg.train.precision, device)
    log(f"teacher: {cfg.model.name_or_path}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, device {device}")
    train(
        model,
        cross_entropy_sum,
        tokenized["train"],
        make_validator(tokenized["validation"], cfg.train.eval_batch_size, amp),
        cfg.train,
        out_dir,
        save=make_saver(tokenizer, run_info(cfg, splits, {"role": "teacher"})),
        device=device,
        dist_info=dist_info,
        resume=resume,
        on_step=on_step,
    )
    if not dist_info.is_main:
        return {}
    return finish_run(out_dir, model, tokenized, cfg, amp, started, log)


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="train_teacher.py"))
