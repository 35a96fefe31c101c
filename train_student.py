"""Distill a trained teacher into a smaller student with any objective from losses/.

    python train_student.py --teacher runs/teacher-minilm/best                 # 3-layer student, ce + forward KL
    python train_student.py --teacher T --set distill.objective="ce:0.5,rkl:0.5@T=2"
    python train_student.py --teacher T --set distill.objective="fkl@T=2,hidden_mse@map=uniform"
    python train_student.py --teacher T --set distill.augment_copies=0      # no augmented transfer set
    python train_student.py --teacher T --set student.prune_vocab=false     # keep the whole vocabulary
    python train_student.py --teacher T --set student.init=narrow --set student.hidden_size=192

The default preset (configs/student-minilm.yaml) prunes the vocabulary to the
URL tokens and adds two teacher-labelled perturbed copies of each training
URL (``distill.augment_copies``); a label-only objective (``ce``) needs
``distill.augment_copies=0``.

The student uses the teacher's data split (from the teacher's run_info.json;
``--set data.KEY=VALUE`` overrides single fields) so that no test URL was
seen by the teacher. Teacher logits are computed once and cached on disk,
keyed by URL. Writes the same run folder as train_teacher.py, plus
``results.json`` with the student-vs-teacher comparison.

With ``--generative`` the student is a causal LM, 4-bit NF4 base + LoRA
adapters (QLoRA), that classifies a URL by the verbalizer word it would write
after a prompt (preset qlora-smollm2; kd/train/generative.py has the loss):

    python train_student.py --generative                                  # preset qlora-smollm2
    python train_student.py --generative --teacher runs/teacher-minilm/best --set distill.objective="ce:0.5,rkl:0.5@T=2"
    python train_student.py --generative --set distill.token_objective="rkl" \\
        --set distill.generative_teacher=PATH --set distill.on_policy=true   # MiniLLM-style, on-policy
    python -m kd.merge_adapters runs/qlora-smollm2/best runs/qlora-smollm2/merged

The generative student runs in one process; its checkpoints hold the adapters only.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from kd.cli import add_common_arguments, config_from_args
from kd.data.batching import tokenize
from kd.data.prompts import tokenize_prompts
from kd.data.splits import Examples, build_splits
from kd.errors import run_cli, usage_errors
from kd.eval.measure import parameter_count
from kd.eval.scoring import make_validator, saved_validation_fpr
from kd.eval.report import write_json
from kd.train.distributed import DistInfo, barrier, close_distributed, default_device
from kd.train.generative import (
    QLoRARunConfig,
    build_objectives,
    load_best_adapters,
    load_generative_teacher,
    make_adapter_saver,
    run_splits,
)
from kd.train.loop import autocast_dtype, check_batch_fits, train
from kd.train.loss_fns import distillation_loss, qlora_loss
from kd.train.run import finish_run, make_saver, run_info, set_seed, setup_process, start_run
from kd.train.runinfo import claim_run_folder, resolved_config
from kd.train.student import (
    StudentRunConfig,
    cached_logits_for,
    compare_with_teacher,
    prepare_student,
    student_objective,
    transfer_examples,
)
from kd.train.teacher_cache import cached_teacher_logits, teacher_logits_file, teacher_scorer
from losses import parse_spec
from models.encoder import load_frozen_classifier, load_tokenizer
from models.lora import load_qlora_student
from models.paths import resolve_model_path
from models.verbalizer import VerbalizerClassifier


def distill_encoder(cfg: StudentRunConfig, resume: bool = False, on_step=None) -> dict:
    """Distill the encoder teacher into the encoder student of ``cfg``; returns (and writes) ``results.json``."""
    started = time.time()
    dist_info, device, log = setup_process(cfg.train.seed)
    out_dir = Path(cfg.out_dir)
    amp = autocast_dtype(cfg.train.precision, device)

    teacher = load_frozen_classifier(cfg.teacher, device)
    teacher_tokenizer = load_tokenizer(cfg.teacher)
    # Read before training, so a teacher without validation scores fails in seconds.
    teacher_fpr = (saved_validation_fpr(cfg.teacher, "distill.threshold=teacher-fpr")
                   if cfg.distill.threshold == "teacher-fpr" else None)
    splits = build_splits(cfg.data)
    transfer = transfer_examples(cfg, splits, log)
    log(splits.report.summary())
    train_examples = Examples(splits.train.urls + transfer.urls, splits.train.labels + transfer.labels)
    check_batch_fits(cfg.train, len(train_examples))
    student = prepare_student(cfg, teacher, teacher_tokenizer, train_examples.urls, log)
    model = student.model.to(device)
    tokenized = {name: tokenize(ex, student.tokenizer, cfg.model.max_length) for name, ex in splits.all_sets().items()}
    student_train = tokenize(train_examples, student.tokenizer, cfg.model.max_length)
    objective = student_objective(cfg, student, teacher, has_transfer_set=bool(transfer.urls)).to(device)
    logits = cached_logits_for(cfg, objective, teacher, teacher_tokenizer, student, train_examples, student_train, amp, log)
    loss_fn = distillation_loss(objective, teacher=teacher if logits is None else None,
                                teacher_logits=logits, teacher_input_ids=student.teacher_ids)
    if dist_info.is_main and not resume:
        start_run(cfg, out_dir, splits)
    barrier(dist_info)
    log(f"student: {parameter_count(model) / 1e6:.2f}M parameters "
        f"(teacher {parameter_count(teacher) / 1e6:.2f}M), objective {objective.spec}")

    info = run_info(cfg, splits, {"role": "student", "objective": objective.spec, "teacher": str(Path(cfg.teacher).resolve()),
                                  "vocabulary_pruning": student.pruning})
    extra = {"objective": objective} if any(True for _ in objective.parameters()) else {}
    trained = train(
        model, loss_fn, student_train, make_validator(tokenized["validation"], cfg.train.eval_batch_size, amp),
        cfg.train, out_dir, save=make_saver(student.tokenizer, info), device=device, dist_info=dist_info,
        resume=resume, extra_modules=extra, on_step=on_step,
    )
    if not dist_info.is_main:
        return {}

    results = finish_run(out_dir, model, tokenized, cfg, amp, started, log, throughput=trained.throughput,
                         validation_fpr=teacher_fpr)
    results["comparison"] = c = compare_with_teacher(out_dir / "best", Path(cfg.teacher), results)
    write_json(out_dir / "results.json", results)
    log(f"student vs teacher: {c['student_parameters'] / 1e6:.2f}M vs {c['teacher_parameters'] / 1e6:.2f}M parameters, "
        f"{c['student_size_mb']:.1f} vs {c['teacher_size_mb']:.1f} MB on disk ({c['percent_smaller']:.1f} % smaller), "
        f"{c['test_set']} F1 {c['student_test_f1']:.4f} vs {c['teacher_test_f1']:.4f} ({c['f1_retained_percent']:.1f} % kept)")
    return results


def distill_generative(cfg: QLoRARunConfig, resume: bool = False, on_step=None) -> dict:
    """Train the QLoRA student of ``cfg``, keep the best adapters by validation and
    evaluate every set at the threshold chosen on validation; returns (and writes) ``results.json``."""
    started = time.time()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SystemExit("the QLoRA recipe runs in one process; launch it without torchrun")
    objective, token_objective = build_objectives(cfg.distill, bool(cfg.teacher))
    device = default_device(DistInfo())
    set_seed(cfg.train.seed)
    out_dir = Path(cfg.out_dir)
    amp = autocast_dtype(cfg.train.precision, device)
    splits = run_splits(cfg)
    print(splits.report.summary())
    check_batch_fits(cfg.train, len(splits.train))

    s = cfg.student
    lm, tokenizer = load_qlora_student(
        s.name_or_path, lora_r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
        target_modules=s.target_modules, quantize=s.quantize, device=device, gradient_checkpointing=s.gradient_checkpointing,
    )
    prompt = s.prompt()
    student = VerbalizerClassifier(lm, prompt.token_ids(tokenizer))
    tokenized = {name: tokenize_prompts(ex, tokenizer, prompt) for name, ex in splits.all_sets().items()}
    teacher_logits = None
    if objective.needs_teacher:

        def score(missing):  # loads the teacher only when the cache lacks some URLs
            teacher_train = tokenize(splits.train, load_tokenizer(cfg.teacher), cfg.model.max_length)
            return teacher_scorer(load_frozen_classifier(cfg.teacher, device), teacher_train,
                                  batch_size=cfg.train.eval_batch_size, autocast_dtype=amp)(missing)

        cache = teacher_logits_file(Path(cfg.teacher), cfg.model.max_length, amp, cfg.distill.cache_dir)
        teacher_logits = cached_teacher_logits(splits.train.urls, cache, score)
    generative_teacher = None
    if token_objective is not None:
        generative_teacher = load_generative_teacher(cfg.distill.generative_teacher, tokenizer,
                                                     cfg.distill.generative_teacher_quantize, device)
    loss_fn = qlora_loss(
        objective, teacher_logits=teacher_logits, token_objective=token_objective, generative_teacher=generative_teacher,
        tokenizer=tokenizer, on_policy=cfg.distill.on_policy, max_new_tokens=cfg.distill.max_new_tokens,
        temperature=cfg.distill.sample_temperature,
    )
    trainable, total = parameter_count(lm, trainable_only=True), parameter_count(lm)
    print(f"student: {s.name_or_path} ({s.quantize}), {trainable / 1e6:.2f}M of {total / 1e6:.1f}M parameters train; "
          f"objective {objective.spec}" + (f", token level {token_objective.spec}" if token_objective else ""))
    if not resume:
        start_run(cfg, out_dir, splits)
    info = run_info(cfg, splits, {
        "role": "qlora-student",
        "objective": objective.spec,
        "token_objective": token_objective.spec if token_objective else None,
        "teacher": str(Path(cfg.teacher).resolve()) if cfg.teacher else None,
        "trainable_parameters": trainable,
        "total_parameters": total,
    })

    trained = train(student, loss_fn, tokenized["train"], make_validator(tokenized["validation"], cfg.train.eval_batch_size, amp),
                    cfg.train, out_dir, save=make_adapter_saver(tokenizer, prompt, info), device=device, resume=resume,
                    on_step=on_step)
    results = finish_run(out_dir, student, tokenized, cfg, amp, started, load=load_best_adapters,
                         throughput=trained.throughput, model_card=False)
    results.update({
        "trainable_parameters": trainable,
        "total_parameters": total,
        "objective": objective.spec,
        "token_objective": token_objective.spec if token_objective else None,
    })
    write_json(out_dir / "results.json", results)
    print(f"trainable {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f} %), "
          f"{results['train_samples_per_s'] or 0:.2f} samples/s, {results['train_tokens_per_s'] or 0:.0f} tokens/s, "
          f"peak memory {results['peak_memory_mib']:,.0f} MiB; adapters in {(out_dir / 'best').resolve()}")
    return results


def main(argv=None) -> dict:
    # No abbreviations: "--gen" must not pass as --generative's prefix unnoticed.
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    add_common_arguments(parser, None, "student-minilm, or qlora-smollm2 with --generative")
    parser.add_argument("--teacher", help="encoder teacher checkpoint folder (default: the config's teacher)")
    parser.add_argument("--generative", action="store_true",
                        help="train the QLoRA generative student (a causal LM with LoRA adapters; default preset qlora-smollm2)")
    args = parser.parse_args(argv)
    args.config = args.config or ("qlora-smollm2" if args.generative else "student-minilm")
    if args.teacher:
        args.set.append(f"teacher={args.teacher}")
    with usage_errors():
        if args.generative:
            cfg = config_from_args(args, QLoRARunConfig)
            build_objectives(cfg.distill, bool(cfg.teacher))  # a bad objective fails before anything loads
        else:
            cfg = config_from_args(args, StudentRunConfig)
            parse_spec(cfg.distill.objective)  # a bad objective fails now, not after the data and the teacher load
    if not args.generative:
        resolve_model_path(cfg.teacher)  # no such folder, custom code: before the run folder is claimed
    inputs = {"--teacher": cfg.teacher}
    if args.generative:
        inputs.update({"student.name_or_path": cfg.student.name_or_path,
                       "distill.generative_teacher": cfg.distill.generative_teacher})
    with claim_run_folder(Path(cfg.out_dir), resume=args.resume, allowed=args.allow_changed, overwrite=args.overwrite,
                          current=resolved_config(cfg), data_cfg=cfg.data, inputs=inputs):
        distill = distill_generative if args.generative else distill_encoder
        try:
            return distill(cfg, resume=args.resume)
        finally:
            close_distributed()


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="train_student.py"))
