"""The options every training recipe takes, the config they build, and running a
recipe as a process of its own (as kd.demo and kd.ablation do)."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from kd.data.sources import SourceSpec
from kd.errors import RecipeFailed
from kd.train.config import RunConfig, load_config


def add_common_arguments(parser: argparse.ArgumentParser, default_config: str | None, default_help: str | None = None) -> None:
    """Options every training recipe takes; ``--config`` defaults to ``default_config``
    (None: the recipe picks one, described by ``default_help``)."""
    parser.add_argument("--config", default=default_config,
                        help=f"YAML preset: a file or a name under configs/ (default: {default_help or default_config})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config field, e.g. train.lr=3e-5 (repeatable)")
    parser.add_argument("--out", help="run folder (default: the config's out_dir)")
    parser.add_argument("--data-dir", help="folder that relative source paths resolve against (default: ../shared/data or ./data)")
    parser.add_argument("--source", action="append", metavar="PATH[:k=v,...]", help="training source(s), replacing the config's; e.g. iscx_url2016/Benign_list_big_final.csv:label=legitimate")
    parser.add_argument("--epochs", type=int, help="shortcut for --set train.epochs=N")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last (optimizer, scheduler, RNG and data order restored); "
                        "refused if the configuration or the data files differ from the run's")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in an --out that holds another run: its checkpoints and results are deleted "
                        "(other files are kept); without it such a folder is refused")
    parser.add_argument("--allow-changed", type=lambda text: [k.strip() for k in text.split(",") if k.strip()], default=[],
                        metavar="KEY,...", help="with --resume: accept these changed config keys, e.g. train.epochs,train.max_steps "
                        "(the optimizer state is kept; the configured train.lr and schedule length apply)")


def config_from_args(args, cls=RunConfig):
    """``cls`` from the preset, ``--set`` and the shortcut options of :func:`add_common_arguments`."""
    overrides = list(args.set)
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.out:
        overrides.append(f"out_dir={args.out}")
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    cfg = load_config(cls, args.config, overrides)
    if args.source:
        cfg.data.sources = [SourceSpec.parse(s).__dict__ for s in args.source]
    return cfg


def run_recipe(module: str, argv: list[str]) -> None:
    """``python -m MODULE ARGV`` (a recipe, e.g. ``train_student``) as a user would run it,
    in a process of its own that imports this repository's code (it goes first on
    ``PYTHONPATH``); :class:`kd.errors.RecipeFailed` if it fails (its own message is above)."""
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    sys.stdout.flush()  # what this process printed comes before the recipe's output
    status = subprocess.run([sys.executable, "-m", module, *argv], env=env).returncode
    if status:
        raise RecipeFailed(f"python -m {module}", status)
