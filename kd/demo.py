"""The quick start: train the offline MiniLM teacher and print its results table.

    make demo            # = python -m kd.demo --out runs/teacher-minilm

Trains the packaged MiniLM-L6 on the Hannousse URLs (split by registrable
domain), evaluates it on its test split and cross-data-set on ISCX benign +
PhishTank, fits the character TF-IDF + logistic-regression baseline on the
same split, and prints both side by side.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from kd.data.paths import HUB_DATASET, default_data_dir
from kd.data.splits import build_splits
from kd.cli import run_recipe
from kd.errors import run_cli, usage_errors
from kd.eval.baseline import tfidf_baseline
from kd.eval.report import format_table, write_json
from kd.train.config import RunConfig, load_config
from kd.train.checkpoint import STATE_DIR
from kd.train.runinfo import device_description, resolved_config, resume_changes


def recipe_flags(out_dir: Path, cfg: RunConfig, overwrite: bool) -> list[str] | None:
    """How a second ``make demo`` treats the run already in ``out_dir``: ``None`` to
    reuse a finished run of the same configuration, ``["--resume"]`` to continue an
    interrupted one, ``["--overwrite"]`` when asked to; otherwise no flag, and the
    recipe refuses a folder that holds another run, naming ``--overwrite``."""
    if overwrite:
        return ["--overwrite"]
    if not (out_dir / "last" / STATE_DIR / "state.json").is_file() or resume_changes(out_dir, resolved_config(cfg), cfg.data):
        return []
    return None if (out_dir / "results.json").is_file() else ["--resume"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/teacher-minilm", help="run folder (default: runs/teacher-minilm, where the student preset looks for its teacher)")
    parser.add_argument("--config", default="teacher-minilm", help="preset to train (default: teacher-minilm)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides, as in train_teacher.py")
    parser.add_argument("--overwrite", action="store_true",
                        help="train again even if --out holds a run (its checkpoints and results are deleted)")
    args = parser.parse_args(argv)

    started = time.time()
    overrides = [*args.set, f"out_dir={args.out}"]
    with usage_errors():
        cfg = load_config(RunConfig, args.config, overrides)
    if cfg.data.data_dir is None and default_data_dir() is None:
        # No local copy: the same Hannousse rows from the Hugging Face hub (needs internet).
        print(f"no ../shared/data or ./data: using the hub copy {HUB_DATASET}")
        overrides += [f"data.sources=[hf:{HUB_DATASET}]", "data.test_sets={}"]
        cfg = load_config(RunConfig, args.config, overrides)
    flags = recipe_flags(Path(cfg.out_dir), cfg, args.overwrite)
    if flags is None:
        print(f"{cfg.out_dir} holds a finished run of this configuration: showing its results (--overwrite trains again)")
    else:
        # The recipe as the user runs it, in a process of its own; its results.json is the teacher's.
        run_recipe("train_teacher", ["--config", args.config, *(f"--set={o}" for o in overrides), *flags])
    teacher = json.loads((Path(cfg.out_dir) / "results.json").read_text())
    splits = build_splits(cfg.data)
    # results.json stores its keys sorted: list the sets in the splits' order, as training printed them.
    teacher["sets"] = {name: teacher["sets"][name] for name in splits.all_sets() if name in teacher["sets"]}
    baseline = tfidf_baseline(splits)
    minutes = (time.time() - started) / 60
    summary = {"teacher": teacher, "baseline_tfidf_logreg": baseline, "minutes": minutes, "device": device_description()}
    write_json(Path(args.out) / "demo_results.json", summary)
    print()
    print(format_table(teacher["sets"], f"teacher {cfg.model.name_or_path} (threshold {teacher['threshold']:.3f} from validation)"))
    print()
    print(format_table(baseline["sets"], "baseline: char 1-5-gram TF-IDF + logistic regression, same split"))
    print(f"\ndemo finished in {minutes:.1f} min on {device_description()}; results in {args.out}/demo_results.json")


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="python -m kd.demo"))
