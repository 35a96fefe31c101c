"""Fine-tune a phishing-URL teacher (any Hugging Face encoder) with the project's loop.

    python train_teacher.py                                  # offline preset: packaged MiniLM-L6, Hannousse
    python train_teacher.py --config bert-base-uncased       # the BERT-base teacher (hub + GPU)
    python train_teacher.py --set train.epochs=2 --set data.split=random
    python train_teacher.py --out runs/teacher --resume      # continue an interrupted run

Writes OUT/best and OUT/last (save_pretrained folders with the tokenizer,
run_info.json and metrics.json), OUT/results.json, OUT/roc.png, OUT/scores.csv.gz (every
scored URL's probability), OUT/splits.csv
and TensorBoard scalars under OUT/tb.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from kd.cli import add_common_arguments, config_from_args
from kd.data.batching import prepare_data
from kd.errors import run_cli, usage_errors
from kd.eval.measure import parameter_count
from kd.eval.scoring import make_validator
from kd.train.config import RunConfig
from kd.train.distributed import barrier, close_distributed
from kd.train.loop import autocast_dtype, check_batch_fits, train
from kd.train.loss_fns import cross_entropy_sum
from kd.train.run import finish_run, make_saver, run_info, setup_process, start_run
from kd.train.runinfo import claim_run_folder, resolved_config
from models.encoder import build_classifier, load_tokenizer
from models.paths import resolve_model_path


def run(cfg: RunConfig, resume: bool = False, on_step=None) -> dict:
    """Fine-tune the teacher of ``cfg``; returns (and writes) ``results.json``."""
    started = time.time()
    dist_info, device, log = setup_process(cfg.train.seed)
    out_dir = Path(cfg.out_dir)
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    splits, tokenized = prepare_data(cfg.data, tokenizer, cfg.model.max_length, log)
    check_batch_fits(cfg.train, len(splits.train))
    if dist_info.is_main and not resume:
        start_run(cfg, out_dir, splits)
    barrier(dist_info)
    model = build_classifier(cfg.model.name_or_path, pretrained=cfg.model.pretrained, dropout=cfg.model.dropout).to(device)
    amp = autocast_dtype(cfg.train.precision, device)
    log(f"teacher: {cfg.model.name_or_path}, {parameter_count(model) / 1e6:.1f}M parameters, device {device}")
    trained = train(
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
    return finish_run(out_dir, model, tokenized, cfg, amp, started, log, throughput=trained.throughput)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, "teacher-minilm")
    args = parser.parse_args(argv)
    with usage_errors():
        cfg = config_from_args(args)
    resolve_model_path(cfg.model.name_or_path)  # no such folder, custom code: before the run folder is claimed
    with claim_run_folder(Path(cfg.out_dir), resume=args.resume, allowed=args.allow_changed, overwrite=args.overwrite,
                          current=resolved_config(cfg), data_cfg=cfg.data,
                          inputs={"model.name_or_path": cfg.model.name_or_path}):
        try:
            return run(cfg, resume=args.resume)
        finally:
            close_distributed()


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="train_teacher.py"))
