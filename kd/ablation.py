"""Run a grid of distillation runs and tabulate mean ± std over seeds.

    python -m kd.ablation configs/ablation-minilm.yaml
    python -m kd.ablation configs/ablation-minilm.yaml --set train.epochs=1   # applied to every cell
    python -m kd.ablation configs/ablation-qwen-pair.yaml --seeds 0           # one seed instead of the grid's
    python -m kd.ablation GRID --shard 0/2 & python -m kd.ablation GRID --shard 1/2   # two workers
    python -m kd.ablation GRID                                                          # then tabulate

A grid file::

    base: student-minilm              # the preset every cell starts from
    set: [train.epochs=3]             # overrides for every cell
    out_dir: runs/ablation
    grid:
      objectives: [ce, "fkl@T={T}", "rkl@T={T}", "fkl@T={T},hidden_mse@map=uniform"]
      temperatures: [2]               # fills {T}; objectives without {T} run once
      seeds: [0, 1, 2]
      students:                       # named shapes: overrides of the student section
        L3: {student.num_layers: 3}

Or named cells, each a set of overrides, for what one objective string
cannot say (the generative student's token-level terms and teachers)::

    recipe: generative                # train_student.py --generative (QLoRA); default: encoder
    base: qlora-qwen-pair
    grid:
      cells:
        fkl: {distill.token_objective: "", distill.generative_teacher: null}
        rkl-off: {distill.objective: "ce:0.5", distill.on_policy: false}
      seeds: [0, 1, 2]

Each cell writes OUT/cells/<name>/ (a normal student run, started as
``python -m train_student --config OUT/cells/<name>.yaml``, with
``--generative`` for a generative ablation). A cell whose
results.json exists is not run again, so an interrupted ablation continues
where it stopped. Writes OUT/cells.csv (one row per cell), OUT/summary.csv
and OUT/summary.md (mean ± std over seeds), OUT/summary.png (F1 bar chart)
and TensorBoard hparams under OUT/tb. With ``--shard I/N`` a worker trains
only cells I, I+N, I+2N, ... and tabulates nothing; the CPU latencies are
measured by the unsharded run that tabulates, so that no other worker's
training shares the cores while they are timed.

The test metrics are those of the split's test part, or of the set named by
``test_set:`` in the grid file (e.g. a held-out source when the split has
none). Every objective is compared with a reference group (``reference:`` in the
grid file, a group such as ``ce|L3``; default: the first group) on the same
test URLs by a paired bootstrap over registrable domains and seeds
(:mod:`kd.eval.compare`): OUT/paired.csv and a second table in summary.md
give each difference in ROC-AUC and F1 with its 95 % interval, whether it is
significant, and the smallest difference the test could detect.

Every row carries validation F1 and ROC-AUC (``val_*``) beside the test
metrics: choose a recipe by the validation columns, then report its test ones;
F1 and ROC-AUC of each extra (cross-data-set) test set as ``SET:f1``; and the
training loop's tokens and samples per second and peak memory. A generative
cell has no CPU latency (its scoring path is not the encoder's; the tables
show "-"), nor a size comparison with its teacher.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kd.cli import run_recipe
from kd.data.splits import read_split_file
from kd.errors import UsageError, run_cli, usage_errors
from kd.eval.inference import scoring_model
from kd.eval.measure import measure_latency
from kd.eval.report import markdown_table, write_csv
from kd.train.checkpoint import STATE_DIR
from kd.train.config import load_config, read_yaml, save_config
from models.quantized import load_classifier

METRICS = ("f1", "roc_auc", "tpr_at_1pct_fpr", "accuracy")
"""Test-set metrics per cell (the columns to report)."""
VALIDATION_METRICS = ("val_f1", "val_roc_auc")
"""Validation-set metrics per cell (the columns to choose a recipe by, never the test ones)."""
CROSS_METRICS = ("f1", "roc_auc")
"""Metrics of each extra test set (``SET:f1``)."""
COSTS = ("train_tokens_per_s", "train_samples_per_s", "peak_memory_mib")
"""What training a cell cost (``TrainResult.throughput``; absent from runs older than it)."""
RECIPES = ("encoder", "generative")
"""``recipe:`` of a grid file: ``train_student.py`` or ``train_student.py --generative``."""


@dataclass(frozen=True)
class Cell:
    group: str
    """The summary row the cell is one seed of."""
    seed: int
    overrides: tuple[str, ...]
    labels: dict = field(default_factory=dict, compare=False)
    """What the cell is, for cells.csv and TensorBoard: objective, temperature, student; or cell."""

    @property
    def name(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.=-]+", "_", f"{self.group}|seed={self.seed}")


def override(key: str, value) -> str:
    """``key=value`` for ``load_config``; YAML's null stays null."""
    return f"{key}={'null' if value is None else value}"


def expand_grid(grid: dict) -> list[Cell]:
    """All cells of the grid: objectives × temperatures × student shapes × seeds,
    or named cells × seeds."""
    known = {"objectives", "temperatures", "seeds", "students", "cells"}
    if set(grid) - known:
        raise ValueError(f"unknown grid key(s) {sorted(set(grid) - known)}; known: {sorted(known)}")
    seeds = [int(seed) for seed in grid.get("seeds") or [0]]
    if "cells" in grid:
        if set(grid) & {"objectives", "temperatures", "students"}:
            raise ValueError("a grid has named cells or objectives x temperatures x students, not both")
        if not grid["cells"] or not isinstance(grid["cells"], dict):
            raise ValueError("grid.cells names at least one cell: {NAME: {KEY: VALUE, ...}, ...}")
        return [Cell(name, seed, (f"train.seed={seed}", *(override(k, v) for k, v in (sets or {}).items())), {"cell": name})
                for name, sets in grid["cells"].items() for seed in seeds]
    if not grid.get("objectives"):
        raise ValueError("the grid needs at least one objective (or named cells)")
    students = grid.get("students") or {"default": {}}
    cells = []
    for template in grid["objectives"]:
        temps = [None]
        if "{T}" in template:
            temps = grid.get("temperatures") or []
            if not temps:
                raise ValueError(f"objective {template!r} uses {{T}} but the grid has no temperatures")
        for temp in temps:
            objective = template.replace("{T}", f"{temp:g}") if temp is not None else template
            label = template.replace("@T={T}", "")
            for shape, shape_overrides in students.items():
                for seed in seeds:
                    overrides = (f"distill.objective={objective}", f"train.seed={seed}",
                                 *(override(k, v) for k, v in (shape_overrides or {}).items()))
                    group = f"{label}{'' if temp is None else f'|T={temp:g}'}|{shape}"
                    cells.append(Cell(group, seed, overrides, {"objective": label, "temperature": temp, "student": shape}))
    return cells


def cell_row(cell: Cell, run_dir: Path, latency_ms: float | None, test_set: str = "test") -> dict:
    """One cell's row: its labels, test (``test_set``), validation and extra-test-set metrics, costs,
    and sizes (an encoder student's against its teacher; a generative one's parameters)."""
    results = json.loads((run_dir / "results.json").read_text())
    sets = results["sets"]
    if test_set not in sets:
        raise UsageError(f"{run_dir} scored no set {test_set!r} (it has {sorted(sets)}): name one with test_set: in the grid file")
    row = {
        "group": cell.group, **cell.labels, "seed": cell.seed, **{m: sets[test_set][m] for m in METRICS},
        **{m: sets["validation"][m.removeprefix("val_")] for m in VALIDATION_METRICS},
        **{f"{name}:{m}": metrics[m] for name, metrics in sets.items() if name not in ("validation", test_set)
           for m in CROSS_METRICS},
        **{key: results.get(key) for key in COSTS},
        "cpu_latency_ms": latency_ms, "train_seconds": results["train_seconds"],
    }
    if "comparison" not in results:  # a generative student
        return {**row, "parameters": results["total_parameters"], "trainable_parameters": results["trainable_parameters"]}
    c = results["comparison"]
    return {**row, "parameters": c["student_parameters"], "teacher_parameters": c["teacher_parameters"],
            "size_mb": c["student_size_mb"], "teacher_size_mb": c["teacher_size_mb"], "percent_smaller": c["percent_smaller"]}


def cpu_latency_ms(run_dir: Path, urls: list[str]) -> float:
    """Median CPU milliseconds to score one URL (batch 1) with the cell's best model."""
    model, tokenizer = load_classifier(run_dir / "best", "fp32", "cpu")
    return measure_latency(scoring_model(model), tokenizer, urls, batch_size=1, warmup=5, repeats=50)


def summarise(rows: list[dict]) -> list[dict]:
    """Mean, standard deviation (ddof=1; 0 for one seed) and the half-width of the 95 %
    t-interval of the mean (``t_{0.975, S-1} * std / sqrt(S)``; 0 for one seed) over
    seeds per group; None where no seed has the value (a generative cell's latency)."""
    from scipy.stats import t as student_t

    sizes = ("parameters", "trainable_parameters", "teacher_parameters", "size_mb", "teacher_size_mb", "percent_smaller")
    out = []
    for group in dict.fromkeys(r["group"] for r in rows):
        members = [r for r in rows if r["group"] == group]
        summary = {"group": group, "seeds": len(members)}
        cross = [k for k in members[0] if ":" in k]
        for key in (*METRICS, *VALIDATION_METRICS, *cross, *COSTS, "cpu_latency_ms"):
            values = np.array([r[key] for r in members if r.get(key) is not None], dtype=float)
            summary[f"{key}_mean"] = float(values.mean()) if len(values) else None
            summary[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0 if len(values) else None
            summary[f"{key}_ci95"] = (float(student_t.ppf(0.975, len(values) - 1) * summary[f"{key}_std"] / np.sqrt(len(values)))
                                      if len(values) > 1 else 0.0 if len(values) else None)
        summary.update({key: members[0][key] for key in sizes if key in members[0]})
        out.append(summary)
    return out


def summary_table(summary: list[dict]) -> str:
    """One row per group, each value the mean over seeds ± the half-width of its 95 % t-interval;
    the "val" columns (validation) are the ones to choose by, the rest are test-set.

    Encoder students: sizes against the teacher and CPU latency. Generative
    students: trainable / total parameters, each extra test set's F1 and
    ROC-AUC, training tokens/s and peak memory; no latency ("-")."""

    def pm(s, key, digits=4):
        if s[key + "_mean"] is None:
            return "-"
        return f"{s[key + '_mean']:.{digits}f} ± {s[key + '_ci95']:.{digits}f}"

    quality = ("val F1", "val ROC-AUC", "F1", "ROC-AUC")

    def metrics(s):
        return [pm(s, "val_f1"), pm(s, "val_roc_auc"), pm(s, "f1"), pm(s, "roc_auc")]

    if "trainable_parameters" not in summary[0]:
        columns = ("objective / student", "seeds", "params (student / teacher)", "size MB", "% smaller", *quality,
                   "TPR@1%FPR", "CPU ms/URL")
        return markdown_table(columns, [
            [s["group"].replace("|", " · "), str(s["seeds"]), f"{s['parameters'] / 1e6:.2f}M / {s['teacher_parameters'] / 1e6:.2f}M",
             f"{s['size_mb']:.1f}", f"{s['percent_smaller']:.1f}", *metrics(s), pm(s, "tpr_at_1pct_fpr"),
             pm(s, "cpu_latency_ms", 2)]
            for s in summary
        ])
    cross = [k.removesuffix(":f1_mean") for k in summary[0] if k.endswith(":f1_mean")]
    columns = ("cell", "seeds", "params (trainable / total)", *quality, *(f"{n} {m}" for n in cross for m in ("F1", "ROC-AUC")),
               "train tokens/s", "peak MiB", "CPU ms/URL")
    return markdown_table(columns, [
        [s["group"], str(s["seeds"]), f"{s['trainable_parameters'] / 1e6:.2f}M / {s['parameters'] / 1e6:.1f}M", *metrics(s),
         *(pm(s, f"{n}:{m}") for n in cross for m in CROSS_METRICS), pm(s, "train_tokens_per_s", 1),
         pm(s, "peak_memory_mib", 0), pm(s, "cpu_latency_ms", 2)]
        for s in summary
    ])


def paired_table(rows: list[dict]) -> str:
    """The paired comparisons (:func:`kd.eval.compare.compare_groups` rows with ``group`` added)."""
    return markdown_table(
        ("objective / student", "set", "metric", "reference", "value", "difference [95 % CI]", "p", "significant", "detectable"),
        [[r["group"].replace("|", " · "), r["set"], r["metric"], f"{r['reference']:.4f}", f"{r['value']:.4f}",
          f"{r['difference']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}]", f"{r['p_value']:.3f}",
          "yes" if r["significant"] else "no", f"{r['mdd']:.4f}"] for r in rows],
        [False, False, False, True, True, True, True, False, True])


def paired_comparisons(cells: list[Cell], configs: list, reference: str, n_boot: int) -> list[dict]:
    """Every group against ``reference`` (:func:`kd.eval.compare.compare_groups`), seeds paired by number."""
    from kd.eval.compare import compare_groups

    groups: dict[str, dict[int, Path]] = {}
    for cell, cfg in zip(cells, configs):
        groups.setdefault(cell.group, {})[cell.seed] = Path(cfg.out_dir)
    seeds = sorted(groups[reference])
    rows = []
    for group, runs in groups.items():
        if group != reference:
            print(f"paired test: {group} against {reference} ({len(seeds)} seeds)", flush=True)
            rows += [{"group": group, **row} for row in compare_groups(
                [groups[reference][s] for s in seeds], [runs[s] for s in seeds], n_boot=n_boot)]
    return rows


def bar_chart(summary: list[dict], teacher_f1: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(summary)), 4))
    x = np.arange(len(summary))
    ax.bar(x, [s["f1_mean"] for s in summary], yerr=[s["f1_std"] for s in summary], capsize=4, color="tab:blue")
    if np.isfinite(teacher_f1):
        ax.axhline(teacher_f1, color="tab:red", linestyle="--", label=f"teacher F1 {teacher_f1:.3f}")
        ax.legend(loc="lower right")
    lows = [s["f1_mean"] - s["f1_std"] for s in summary] + ([teacher_f1] if np.isfinite(teacher_f1) else [])
    ax.set_ylim(max(0.0, min(lows) - 0.03), 1.0)
    ax.set_xticks(x, [s["group"] for s in summary], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("test F1 (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_student(cfg, config_file: Path, resume: bool, generative: bool = False) -> None:
    """One cell: its checked config written to ``config_file``, then ``python -m
    train_student --config FILE`` (``--generative``) as the user would run it, in a process of its own."""
    config_file.parent.mkdir(parents=True, exist_ok=True)
    save_config(cfg, config_file)
    run_recipe("train_student", ["--config", str(config_file), *(["--generative"] if generative else []),
                                 *(["--resume"] if resume else [])])


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``."""
    index, slash, count = text.partition("/")
    if not (slash and index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise argparse.ArgumentTypeError(f"--shard takes I/N with 0 <= I < N, e.g. 0/2; got {text!r}")
    return int(index), int(count)


def parse_seeds(text: str) -> list[int]:
    """``"0,1"`` -> ``[0, 1]``: the seeds that replace the grid's ``seeds``."""
    parts = text.split(",")
    if not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"--seeds takes comma-separated non-negative integers, e.g. 0,1; got {text!r}")
    return [int(p) for p in parts]


def main(argv=None) -> list[dict]:
    from kd.train.generative import QLoRARunConfig, build_objectives
    from kd.train.student import StudentRunConfig
    from losses import parse_spec

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grid", help="grid YAML file (see above)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every cell")
    parser.add_argument("--out", help="ablation folder (default: the grid file's out_dir)")
    parser.add_argument("--shard", type=parse_shard, metavar="I/N",
                        help="train only every N-th cell starting at I (parallel workers); no tables")
    parser.add_argument("--seeds", type=parse_seeds, metavar="S,S,...",
                        help="run these seeds instead of the grid's (e.g. 0 for a first pass on a CPU)")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates of the paired tests (default 1000)")
    args = parser.parse_args(argv)

    with usage_errors():  # every cell's configuration is checked before the first one trains
        spec = read_yaml(Path(args.grid).read_text(), args.grid)
        if not isinstance(spec, dict) or "grid" not in spec:
            raise UsageError(f"{args.grid} has no 'grid' section (see python -m kd.ablation --help)")
        known = ("recipe", "base", "set", "out_dir", "grid", "reference", "test_set")
        unknown = set(spec) - set(known)
        if unknown:
            raise UsageError(f"unknown key(s) {sorted(unknown)} in {args.grid}; known: {', '.join(known)}")
        recipe = spec.get("recipe", "encoder")
        if recipe not in RECIPES:
            raise UsageError(f"recipe must be one of {', '.join(RECIPES)}, not {recipe!r}")
        generative = recipe == "generative"
        out = Path(args.out or spec.get("out_dir", "runs/ablation"))
        cells = expand_grid({**spec["grid"], **({"seeds": args.seeds} if args.seeds else {})})
        configs = [load_config(QLoRARunConfig if generative else StudentRunConfig, spec.get("base"),
                               [*spec.get("set", []), *args.set, *cell.overrides, f"out_dir={out / 'cells' / cell.name}"])
                   for cell in cells]
        groups = list(dict.fromkeys(cell.group for cell in cells))
        if spec.get("reference") is not None and spec["reference"] not in groups:
            raise UsageError(f"reference: {spec['reference']!r} is not a group of the grid; groups: {groups}")
        for cfg in configs:
            if generative:
                build_objectives(cfg.distill, bool(cfg.teacher))
            else:
                parse_spec(cfg.distill.objective)
    print(f"ablation: {len(cells)} cells -> {out}")
    rows = []
    from torch.utils.tensorboard import SummaryWriter

    writer = None if args.shard else SummaryWriter(str(out / "tb"))
    for number, (cell, cfg) in enumerate(zip(cells, configs), 1):
        if args.shard and (number - 1) % args.shard[1] != args.shard[0]:
            continue
        run_dir = Path(cfg.out_dir)
        if (run_dir / "results.json").is_file():
            print(f"[{number}/{len(cells)}] {cell.name}: done earlier, not re-run")
        else:
            resume = (run_dir / "last" / STATE_DIR).is_dir()
            print(f"[{number}/{len(cells)}] {cell.name}" + (" (resuming)" if resume else ""))
            run_student(cfg, out / "cells" / f"{cell.name}.yaml", resume, generative)
        if args.shard:
            continue
        latency_file = run_dir / "cpu_latency.json"
        if not generative and not latency_file.is_file():
            urls = [url for (_, _, url), _ in zip(read_split_file(run_dir / "splits.csv"), range(200))]  # any 200 of the run
            latency_file.write_text(json.dumps({"cpu_latency_ms_batch1": cpu_latency_ms(run_dir, urls)}))
        latency = None if generative else json.loads(latency_file.read_text())["cpu_latency_ms_batch1"]
        row = cell_row(cell, run_dir, latency, spec.get("test_set", "test"))
        rows.append(row)
        writer.add_hparams(
            {**{k: 0.0 if v is None else v for k, v in cell.labels.items()}, "seed": cell.seed},
            {f"hparam/{m}": row[m] for m in (*METRICS, *VALIDATION_METRICS)},
            run_name=cell.name,
        )
    if args.shard:
        print(f"shard {args.shard[0]}/{args.shard[1]} done; run without --shard to measure latencies and tabulate")
        return []
    writer.close()
    summary = summarise(rows)
    write_csv(rows, out / "cells.csv")
    write_csv(summary, out / "summary.csv")
    table = summary_table(summary)
    reference = spec.get("reference") or cells[0].group
    paired = paired_comparisons(cells, configs, reference, args.n_boot) if len(summary) > 1 else []
    if paired:
        write_csv(paired, out / "paired.csv")
        table += (f"\n\nPaired against `{reference}` on the same test URLs (domains and seeds resampled, "
                  f"{args.n_boot} replicates; detectable: the smallest difference found with 80 % power):\n\n" + paired_table(paired))
    (out / "summary.md").write_text(table + "\n")
    comparison = json.loads((out / "cells" / cells[0].name / "results.json").read_text()).get("comparison", {})
    bar_chart(summary, comparison.get("teacher_test_f1", float("nan")), out / "summary.png")
    print(table)
    return summary


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="python -m kd.ablation"))
