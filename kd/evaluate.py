"""Evaluate any saved classifier on any data spec, with the threshold chosen on validation.

    python -m kd.evaluate --model runs/teacher-minilm/best
    python -m kd.evaluate --model runs/student/best --test-source iscx=iscx_url2016/phishing_dataset.csv:label=phishing

By default the data spec is the one the checkpoint was trained with (from its
run_info.json), so the same split is rebuilt exactly; ``--set data.KEY=VALUE``
changes single fields of it, ``--config`` replaces it with a preset's and
``--source`` replaces its sources. The spec used is printed. The threshold
maximises F1 on the validation split and is applied unchanged to every test set. URLs are scored in the model's
recorded scoring precision (``scoring_precision`` in its metrics.json, as
training, quantize.py and kd.predict do; without one, as loaded); an ONNX
export (``kd.export``) is scored by ONNX Runtime as exported. Writes OUT/eval.json,
OUT/roc.png and OUT/scores.csv.gz, every URL's probability (OUT defaults to the model folder's parent run / eval-<name>).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from kd.argtypes import positive_int, token_length
from kd.data.batching import prepare_data
from kd.data.sources import SourceSpec
from kd.data.splits import DataConfig
from kd.errors import UsageError, run_cli, usage_errors
from kd.eval.inference import check_max_length, scoring_model
from kd.eval.report import format_table, write_json
from kd.eval.scoring import final_evaluation, saved_scoring
from kd.train.config import RunConfig, load_config, teacher_data_section
from kd.train.outputs import check_apart


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that replace or extend a checkpoint's data spec (read by :func:`data_config_for`)."""
    parser.add_argument("--config", help="YAML preset whose data section to use instead of the checkpoint's")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override data fields, e.g. data.split=random")
    parser.add_argument("--source", action="append", metavar="PATH[:k=v,...]", help="replace the sources that are split into train/validation/test")
    parser.add_argument("--test-source", action="append", metavar="NAME=PATH[:k=v,...]", help="add a source to the extra test set NAME (repeatable)")
    parser.add_argument("--data-dir", help="folder that relative source paths resolve against")


def data_config_for(model_dir: Path, args) -> DataConfig:
    """The data spec to score ``model_dir`` on, printed with where it came from.

    ``--config`` gives a preset's data section; otherwise the checkpoint's own
    (its ``run_info.json``), so that its split is rebuilt and no training URL
    is scored. ``--set`` overrides single fields of either; ``--source``,
    ``--test-source`` and ``--data-dir`` apply last.
    """
    if args.config:
        cfg, origin = load_config(RunConfig, args.config, args.set).data, f"the data section of {args.config}"
    else:
        saved = teacher_data_section(model_dir)
        if not saved and not (args.set or args.source):
            raise UsageError(f"{model_dir} has no run_info.json: name the data with --config / --set / --source")
        cfg = load_config(RunConfig, None, args.set, data_base=saved).data
        origin = f"{model_dir / 'run_info.json'}" if saved else "the default data section"
    if args.set:
        origin += f" with --set {' '.join(args.set)}"
    if args.data_dir:
        cfg.data_dir = args.data_dir
    if args.source:
        cfg.sources = [SourceSpec.parse(s).__dict__ for s in args.source]
    for item in args.test_source or []:
        name, eq, spec = item.partition("=")
        if not eq:
            raise UsageError(f"--test-source takes NAME=PATH[:k=v,...], got {item!r}")
        cfg.test_sets.setdefault(name, []).append(SourceSpec.parse(spec).__dict__)
    print(f"data spec ({origin}): {json.dumps(dataclasses.asdict(cfg))}")
    return cfg


def main(argv=None) -> dict:
    from models.onnx import is_onnx_folder, load_onnx_classifier
    from models.quantized import load_classifier, saved_precision

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="a saved model folder (teacher, student, quantized, or an ONNX export of kd.export)")
    add_data_arguments(parser)
    parser.add_argument("--max-length", type=token_length, default=128, help="tokens per URL (default 128)")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="URLs per forward pass (default 256)")
    parser.add_argument("--out", help="output folder (default: <model>/../eval-<model name>)")
    args = parser.parse_args(argv)

    model_dir = Path(args.model)
    out = Path(args.out) if args.out else model_dir.resolve().parent.parent / f"eval-{model_dir.name}"
    check_apart(out, "--out", {"--model": model_dir})
    with usage_errors():
        data_cfg = data_config_for(model_dir, args)
    check_max_length(model_dir, args.max_length)
    if is_onnx_folder(model_dir):  # kd.export's folder, scored by ONNX Runtime as exported
        scorer, tokenizer = load_onnx_classifier(model_dir)
        scoring = f"onnx-{scorer.precision}"
    else:
        model, tokenizer = load_classifier(model_dir)
        _, scoring, _ = saved_scoring(model_dir, default_precision=saved_precision(model_dir))
        scorer = scoring_model(model)
    _, tokenized = prepare_data(data_cfg, tokenizer, args.max_length)
    out.mkdir(parents=True, exist_ok=True)
    result = final_evaluation(scorer, tokenized, args.batch_size, scoring, out)
    result["model"] = str(model_dir)
    write_json(out / "eval.json", result)
    print(format_table(result["sets"], f"{model_dir} (threshold {result['threshold']:.3f} chosen on validation)"))
    print(f"wrote {out / 'eval.json'} and {out / 'roc.png'}")
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="python -m kd.evaluate"))
