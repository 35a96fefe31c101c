"""The multi-source benchmark: in-source, leave-one-source-out and temporal scores, each with a CI.

    python -m kd.benchmark configs/benchmark-multisource.yaml                       # TF-IDF baseline rows only
    python -m kd.benchmark configs/benchmark-multisource.yaml --folds-only          # only the training sets below
    python -m kd.benchmark configs/benchmark-multisource.yaml --model teacher:runs/benchmark-union/best \\
        --fold-model teacher:esdaung=runs/benchmark-loso-esdaung/best ...  # models trained on the folds below
    python -m kd.benchmark configs/benchmark-multisource.yaml --smoke --out /tmp/bench   # tiny caps, seconds

The sources of the config are read (:mod:`kd.data.multisource`), split once
70/10/20 by registrable domain across all of them, and capped per split,
source and class. Columns of the matrix: each two-class source's test part,
the pooled test part, and ``temporal``: the dated source's phishing URLs from
``temporal.since`` on (test-split domains only) against the test-split
legitimate URLs of ``temporal.legitimate``. Training never sees a dated URL
from ``since`` on.

Rows: each ``--model [ROW:]FOLDER`` (its saved threshold, as deployed), the
models trained without one source each (``--fold-model [ROW:]SOURCE=FOLDER``,
one row per ROW: teacher, student, NF4 ...), the TF-IDF baseline
trained on the union's train part (threshold chosen on validation), and the
TF-IDF baseline left out of each source in turn (``leave-one-source-out``:
the column's source is absent from training). A model left out of a source is
scored on that source's *held-out set* (:func:`held_out_set`): every URL of
it whose registrable domain the fold never trained on, about five times its
test part. Each cell reports ROC-AUC,
F1, TPR and FPR at the threshold, TPR at 1 % FPR, each with its 95 % cluster-bootstrap
CI (:mod:`kd.eval.bootstrap`, domains resampled), and the minimal detectable
ROC-AUC difference. Each model row, and the TF-IDF row of its kind, is also
compared, paired on the same URLs, with the first row of its kind (a student
and the baseline with the teacher): difference, CI, p-value, and the share of
the reference's value it keeps.
Writes OUT/benchmark.{md,json,png} and, under
OUT/folds/, the data of each training set (union and one per left-out
source) as CSV files with a teacher config to train on them::

    python train_teacher.py --config OUT/folds/loso-esdaung/teacher.yaml
"""
from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from kd.data.multisource import SourceSet, cap_indices, read_multisource, split_multisource
from kd.data.splits import DataConfig, DataReport
from kd.errors import UsageError, run_cli, usage_errors
from kd.train.config import read_yaml
from kd.train.outputs import check_apart
from kd.eval.bootstrap import bootstrap_ci, cluster_index, minimal_detectable_difference
from kd.eval.baseline import fit_tfidf
from kd.eval.metrics import choose_threshold, tpr_at_fpr
from kd.eval.report import markdown_table, write_json, written_beside

TEMPORAL = "temporal"
POOLED = "pooled"
LOSO = "leave-one-source-out"


@dataclass
class BenchmarkConfig:
    """What the benchmark reads, how it splits and caps, and how it resamples."""

    sources: dict
    """Two-class sources: name -> list of source specs (``PATH[:k=v,...]``); a URL in two keeps the first."""
    temporal: dict = field(default_factory=dict)
    """``{source, specs, since, legitimate}``: a dated phishing source (JPCERT), the first date
    reported, the two-class source whose test-split legitimate URLs it is scored against."""
    data_dir: str | None = None
    fractions: list = field(default_factory=lambda: [0.7, 0.1, 0.2])
    seed: int = 0
    max_train_per_class: int | None = 20000
    """Cap per source and class on the train and validation parts."""
    max_test_per_class: int | None = None
    """Cap per source and class on the test parts (None: whole; keep them large, see the module docstring)."""
    n_boot: int = 1000
    C: float = 10.0
    teacher_base: str = "teacher-minilm"
    """The preset whose model and train sections the fold configs keep."""

    @classmethod
    def load(cls, path: str) -> "BenchmarkConfig":
        if not Path(path).is_file():
            raise UsageError(f"no benchmark config {path!r}")
        raw = read_yaml(Path(path).read_text(), path) or {}
        if not isinstance(raw, dict):
            raise UsageError(f"{path}: a benchmark config is a mapping of keys, got {type(raw).__name__}")
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise UsageError(f"{path}: unknown key(s) {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        if not isinstance(raw.get("sources"), dict) or len(raw["sources"]) < 2:
            raise UsageError(f"{path}: sources must map at least two names to lists of source specs")
        temporal = raw.get("temporal") or {}
        if temporal and set(temporal) != {"source", "specs", "since", "legitimate"}:
            raise UsageError(f"{path}: temporal needs exactly source, specs, since, legitimate; got {sorted(temporal)}")
        if temporal and temporal["legitimate"] not in raw["sources"]:
            raise UsageError(f"{path}: temporal.legitimate {temporal['legitimate']!r} is not one of the sources")
        return cls(**raw)


def cell_metrics(test: SourceSet, probs: np.ndarray, threshold: float, n_boot: int, seed: int) -> dict:
    """ROC-AUC, F1, TPR and FPR at ``threshold``, TPR at 1 % FPR, each
    with its cluster-bootstrap CI; the minimal detectable ROC-AUC difference
    (two independent models: ``sqrt(2) * se``); class counts."""
    from sklearn.metrics import f1_score, roc_auc_score

    labels = np.asarray(test.labels)
    clusters = cluster_index(test.domains())
    metrics = {
        "roc_auc": roc_auc_score,
        "f1_at_threshold": lambda y, p: f1_score(y, p >= threshold, zero_division=0.0),
        "tpr_at_threshold": lambda y, p: float((p[y == 1] >= threshold).mean()) if (y == 1).any() else float("nan"),
        "tpr_at_1pct_fpr": lambda y, p: tpr_at_fpr(y, p, 0.01),
        "fpr_at_threshold": lambda y, p: float((p[y == 0] >= threshold).mean()) if (y == 0).any() else float("nan"),
    }
    out = {name: bootstrap_ci(labels, probs, clusters, fn, n_boot=n_boot, seed=seed) for name, fn in metrics.items()}
    out["mdd_roc_auc"] = minimal_detectable_difference(math.sqrt(2) * out["roc_auc"]["se"])
    out["n_legitimate"], out["n_phishing"] = int((labels == 0).sum()), int((labels == 1).sum())
    out["n_domains"] = int(clusters.max()) + 1
    out["threshold"] = float(threshold)
    return out


def _fold_data(cfg: BenchmarkConfig, parts: dict[str, SourceSet], out: Path, name: str, leave_out: str | None) -> dict:
    """Write one training set (train + validation parts without ``leave_out``) and its test
    sets as CSV (the union: every source's test part; a left-out source: its held-out set), with a
    teacher config; return its data spec."""
    folder = out / "folds" / name
    folder.mkdir(parents=True, exist_ok=True)
    keep = lambda s: s != leave_out  # noqa: E731
    train = SourceSet.concat([p.where(lambda i, p=p: keep(p.sources[i])) for p in (parts["train"], parts["validation"])])
    _write_urls(folder / "train.csv", train)
    tests = {}
    for source in cfg.sources:
        if leave_out is None:
            _write_urls(folder / f"test-{source}.csv", parts["test"].where(lambda i: parts["test"].sources[i] == source))
        elif source == leave_out:
            _write_urls(folder / f"test-{source}.csv", parts[held_out_name(source)])
        else:
            continue
        tests[source] = [str((folder / f"test-{source}.csv").resolve())]
    if TEMPORAL in parts and leave_out is None:
        _write_urls(folder / "test-temporal.csv", parts[TEMPORAL])
        tests[TEMPORAL] = [str((folder / "test-temporal.csv").resolve())]
    fraction_val = cfg.fractions[1] / (cfg.fractions[0] + cfg.fractions[1])
    data = {"sources": [str((folder / "train.csv").resolve())], "split": "domain", "seed": cfg.seed,
            "fractions": [1 - fraction_val, fraction_val, 0.0], "test_sets": tests}
    preset = Path(__file__).resolve().parents[1] / "configs" / f"{cfg.teacher_base}.yaml"
    base = read_yaml(preset.read_text(), str(preset))
    teacher = {**base, "data": data, "out_dir": f"runs/benchmark-{name}"}
    (folder / "teacher.yaml").write_text(
        f"# Teacher for the {name} fold of kd.benchmark: python train_teacher.py --config {folder / 'teacher.yaml'}\n"
        + yaml.safe_dump(teacher, sort_keys=False, allow_unicode=True))
    return {"train": train.sizes(), "config": str(folder / "teacher.yaml"), "test_sets": sorted(tests)}


def _write_urls(path: Path, data: SourceSet) -> None:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["url", "label", "source", "date", "brand"])
        writer.writerows(zip(data.urls, ["phishing" if y else "legitimate" for y in data.labels], data.sources, data.dates, data.brands))


def _is_future(data: SourceSet, i: int, dated_source: str, since: str) -> bool:
    """Whether example ``i`` is from the dated source and dated ``since`` or later (or undated)."""
    return data.sources[i] == dated_source and (data.dates[i] >= since or not data.dates[i])


def build_parts(cfg: BenchmarkConfig, report: DataReport) -> dict[str, SourceSet]:
    """``{train, validation, test, "held-out SOURCE"..., temporal?}``: the union split, capped,
    each two-class source's held-out set (:func:`held_out_set`) and the temporal test.

    The dated source's URLs from ``since`` on (and the few undated ones) are in
    no training part; its test-split ones from ``since`` on are the temporal
    test's phishing side."""
    sources, dated = dict(cfg.sources), {}
    if cfg.temporal:
        dated_source, since = cfg.temporal["source"], str(cfg.temporal["since"])
        sources[dated_source] = cfg.temporal["specs"]
        first = cfg.temporal["specs"][0]
        dated[dated_source] = (first if isinstance(first, str) else first["path"]).split(":")[0]
    data = read_multisource(sources, DataConfig(data_dir=cfg.data_dir, seed=cfg.seed), report, dated=dated)
    caps = {"train": cfg.max_train_per_class, "validation": cfg.max_train_per_class, "test": cfg.max_test_per_class}
    whole = split_multisource(data, cfg.fractions, cfg.seed, {})
    parts = {}
    for name, part in whole.items():
        early = part.where(lambda i, p=part: not _is_future(p, i, dated_source, since)) if cfg.temporal else part
        parts[name] = early.subset(cap_indices(early, caps[name], cfg.seed))
    for source in cfg.sources:
        held = held_out_set(whole, parts, source)
        parts[held_out_name(source)] = held.subset(cap_indices(held, cfg.max_test_per_class, cfg.seed))
    if not cfg.temporal:
        return parts
    report.dropped[f"{dated_source}: undated (in no split)"] = sum(s == dated_source and not d for s, d in zip(data.sources, data.dates))
    test = whole["test"]
    future = test.where(lambda i: _is_future(test, i, dated_source, since) and test.dates[i] != "")
    legitimate = parts["test"].where(lambda i: parts["test"].sources[i] == cfg.temporal["legitimate"] and parts["test"].labels[i] == 0)
    parts[TEMPORAL] = SourceSet.concat([legitimate, future.subset(cap_indices(future, cfg.max_test_per_class, cfg.seed))])
    return parts


def held_out_name(source: str) -> str:
    return f"held-out {source}"


def held_out_set(whole: dict[str, SourceSet], parts: dict[str, SourceSet], source: str) -> SourceSet:
    """What the models trained without ``source`` are scored on: every URL of ``source``, from all
    three uncapped parts of the split, less those whose registrable domain is in the fold's
    training data (the capped train and validation parts of the other sources).

    The source's test part is all in it (its domains are in no training part); its train and
    validation URLs are in it too, since that fold never trains on them. About five times the
    test part, so TPR at 0.1 % FPR rests on tens of legitimate URLs and the intervals narrow."""
    seen = {d for name in ("train", "validation") for d, s in zip(parts[name].domains(), parts[name].sources) if s != source}
    everything = SourceSet.concat([whole[name].where(lambda i, p=whole[name]: p.sources[i] == source) for name in whole])
    return everything.subset([i for i, d in enumerate(everything.domains()) if d not in seen])


def test_columns(cfg: BenchmarkConfig, parts: dict[str, SourceSet]) -> dict[str, SourceSet]:
    """Each two-class source's test part, the pooled test part of those, and the temporal test."""
    test = parts["test"]
    columns = {s: test.where(lambda i, s=s: test.sources[i] == s) for s in cfg.sources}
    columns[POOLED] = test.where(lambda i: test.sources[i] in cfg.sources)
    if TEMPORAL in parts:
        columns[TEMPORAL] = parts[TEMPORAL]
    return columns


def score_model_folder(model_dir: Path, columns: dict[str, SourceSet]) -> tuple[dict[str, np.ndarray], float]:
    """P(phishing) of every column's URLs (already normalised; each distinct URL scored once) from a
    saved classifier, and its saved (deployed) threshold."""
    from kd.eval.inference import predict_proba, scoring_model
    from kd.eval.scoring import saved_scoring, scoring_autocast
    from models.quantized import load_classifier, saved_precision

    model, tokenizer = load_classifier(model_dir)
    threshold, precision, _ = saved_scoring(model_dir, default_precision=saved_precision(model_dir))
    model = scoring_model(model)
    unique = list(dict.fromkeys(url for col in columns.values() for url in col.urls))  # pooled repeats the sources
    probs = dict(zip(unique, predict_proba(model, tokenizer, unique, normalize=False, autocast_dtype=scoring_autocast(precision),
                                           progress=True)))
    return {name: np.array([probs[url] for url in col.urls]) for name, col in columns.items()}, threshold


def run_benchmark(cfg: BenchmarkConfig, out: Path, models: dict[str, Path] | None = None,
                  fold_models: dict[str, dict[str, Path]] | None = None, folds_only: bool = False) -> dict:
    """Build the parts, write the folds, score every row on every column; return the results.

    ``models`` maps a row name to a model folder scored on every column;
    ``fold_models`` maps a row name to ``{source: the model trained without it}``
    (its ``loso-SOURCE`` fold), each scored on that source's held-out set only. With
    ``folds_only`` nothing is scored: the result has the folds and sizes, no rows."""
    started = time.perf_counter()
    report = DataReport()
    parts = build_parts(cfg, report)
    print(f"read and split in {time.perf_counter() - started:.0f} s: " + ", ".join(f"{n} {len(p)}" for n, p in parts.items()), flush=True)
    columns = test_columns(cfg, parts)
    folds = {"union": _fold_data(cfg, parts, out, "union", None)}
    folds.update({f"loso-{s}": _fold_data(cfg, parts, out, f"loso-{s}", s) for s in cfg.sources})
    split_sizes = {name: part.sizes() for name, part in parts.items()}
    if folds_only:
        return {"config": cfg.__dict__, "split_sizes": split_sizes, "folds": folds}
    held_out = {s: parts[held_out_name(s)] for s in cfg.sources}
    rows: dict[str, dict] = {}
    scored: dict[str, dict] = {}  # row -> column -> (probs, threshold), for the paired comparisons

    def score(row: str, column: str, test: SourceSet, probs, threshold):
        rows.setdefault(row, {})[column] = cell_metrics(test, probs, threshold, cfg.n_boot, cfg.seed)
        scored.setdefault(row, {})[column] = (probs, threshold)

    for row, folder in (models or {}).items():
        probs, threshold = score_model_folder(folder, columns)
        for column in columns:
            score(f"{row} (union)", column, columns[column], probs[column], threshold)
        print(f"{row} (union) scored at {time.perf_counter() - started:.0f} s", flush=True)
    for row, folders in (fold_models or {}).items():
        for source, folder in folders.items():
            probs, threshold = score_model_folder(folder, {source: held_out[source]})
            score(f"{row} ({LOSO})", source, held_out[source], probs[source], threshold)
        print(f"{row} ({LOSO}) scored at {time.perf_counter() - started:.0f} s", flush=True)
    probs, threshold = _tfidf_scores(cfg, parts["train"], parts["validation"], columns)
    for column in columns:
        score("tfidf (union)", column, columns[column], probs[column], threshold)
    print(f"tfidf (union) fitted and scored at {time.perf_counter() - started:.0f} s", flush=True)
    for source in cfg.sources:
        keep = lambda p: p.where(lambda i: p.sources[i] != source)  # noqa: E731
        probs, threshold = _tfidf_scores(cfg, keep(parts["train"]), keep(parts["validation"]), {source: held_out[source]})
        score(f"tfidf ({LOSO})", source, held_out[source], probs[source], threshold)
    fold_rows = [f"{row} ({LOSO})" for row in fold_models or {}]
    paired = paired_rows(scored, [([f"{row} (union)" for row in models or {}] + ["tfidf (union)"] * bool(models), columns),
                                  (fold_rows + [f"tfidf ({LOSO})"] * bool(fold_rows), held_out)], cfg.n_boot, cfg.seed)
    return {
        "config": cfg.__dict__, "models": {row: str(f) for row, f in (models or {}).items()},
        "fold_models": {row: {s: str(f) for s, f in folders.items()} for row, folders in (fold_models or {}).items()}, "rows": rows,
        "paired": paired, "split_sizes": split_sizes, "folds": folds,
        "data": report.to_dict(), "cpu": cpu_model(), "seconds": round(time.perf_counter() - started, 1),
    }


def paired_rows(scored: dict[str, dict], kinds: list[tuple[list[str], dict[str, SourceSet]]], n_boot: int, seed: int) -> list[dict]:
    """Every model row against the first row of its kind, on the same URLs of each column both
    scored: :func:`kd.eval.compare.paired_metrics` rows (ROC-AUC, F1 at each model's own
    threshold) with ``row``, ``against`` and ``column`` added. ``kinds``: ``(rows, sets)`` pairs,
    here the ``--model`` rows on the test columns and the ``--fold-model`` rows on the held-out
    sets, each kind followed by its TF-IDF row, so a student and the baseline are compared with
    the teacher listed first."""
    from kd.eval.compare import paired_metrics

    out = []
    for names, sets in kinds:
        for row in names[1:]:
            for column, (probs, threshold) in scored[row].items():
                if column not in scored[names[0]]:
                    continue
                ref_probs, ref_threshold = scored[names[0]][column]
                clusters = cluster_index(sets[column].domains())
                for cell in paired_metrics(sets[column].labels, clusters, ref_probs, probs, [ref_threshold], [threshold],
                                           n_boot=n_boot, seed=seed):
                    out.append({"row": row, "against": names[0], "column": column, **cell})
    return out


def _tfidf_scores(cfg: BenchmarkConfig, train: SourceSet, validation: SourceSet, tests: dict[str, SourceSet]):
    fitted = fit_tfidf(train.urls, train.labels, cfg.C)
    threshold = choose_threshold(validation.labels, fitted.predict_proba(validation.urls)[:, 1])
    return {name: fitted.predict_proba(t.urls)[:, 1] for name, t in tests.items()}, threshold


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else :func:`platform.processor`."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def matrix_columns(rows: dict[str, dict]) -> list[str]:
    """Every column some row scored, in the order first seen (a first row left out of one source
    has one column only)."""
    return list(dict.fromkeys(column for cells in rows.values() for column in cells))


def _ci(cell: dict, key: str) -> str:
    m = cell[key]
    return f"{m['value']:.3f} [{m['low']:.3f}, {m['high']:.3f}]"


def markdown_report(result: dict) -> str:
    """The ROC-AUC matrix, then one table per metric family, the split sizes and the folds."""
    rows, columns = result["rows"], matrix_columns(result["rows"])
    lines = [f"# Multi-source benchmark\n\nCPU: {result['cpu']}; {result['seconds']} s.",
             "Each cell: value [95 % CI], resampling registrable domains "
             f"({result['config']['n_boot']} replicates). Columns are test parts of one split by registrable domain "
             "across all sources; `temporal`: phishing dated from "
             f"{result['config']['temporal'].get('since', '-')} on against held-out legitimate URLs. Rows trained "
             f"{LOSO} are scored on the held-out source: every URL of it whose registrable domain is in no training "
             "URL of that fold (its test part and most of its train and validation parts).\n"]
    for key, title in (("roc_auc", "ROC-AUC"), ("f1_at_threshold", "F1 at the deployed threshold"),
                       ("tpr_at_threshold", "TPR at the deployed threshold"),
                       ("fpr_at_threshold", "FPR at the deployed threshold"), ("tpr_at_1pct_fpr", "TPR at 1 % FPR")):
        table = [[row] + [_ci(cells[c], key) if c in cells else "-" for c in columns] for row, cells in rows.items()]
        lines += [f"## {title}\n", markdown_table(["trained / scored", *columns], table, [False] + [True] * len(columns)), ""]
    sizes = {**rows["tfidf (union)"], **{f"{c}, held out": m for c, m in rows[f"tfidf ({LOSO})"].items()}}
    lines += ["## Test sizes\n", markdown_table(
        ["column", "legitimate", "phishing", "domains", "minimal detectable ROC-AUC difference", "legitimate URLs behind TPR at 0.1 % FPR"],
        [[c, str(m["n_legitimate"]), str(m["n_phishing"]), str(m["n_domains"]), f"{m['mdd_roc_auc']:.4f}",
          f"{m['n_legitimate'] * 0.001:.1f}"] for c, m in sizes.items()], [False] + [True] * 5), ""]
    if result.get("paired"):
        lines += ["## Paired against the first row of its kind\n",
                  "Same URLs, registrable domains resampled; F1 at each model's own threshold; `kept`: value / reference; "
                  "`detectable`: the smallest difference this column shows with 80 % power.\n",
                  markdown_table(["row", "against", "column", "metric", "reference", "value", "kept", "difference [95 % CI]", "p",
                                  "significant", "detectable"],
                                 [[r["row"], r["against"], r["column"], r["metric"], f"{r['reference']:.4f}", f"{r['value']:.4f}",
                                   f"{r['value'] / r['reference']:.1%}" if r["reference"] else "-",
                                   f"{r['difference']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}]", f"{r['p_value']:.3f}",
                                   "yes" if r["significant"] else "no", f"{r['mdd']:.4f}"] for r in result["paired"]],
                                 [False] * 4 + [True] * 4 + [True, False, True]), ""]
    models = {**result.get("models", {}), **{f"{row} ({s})": f for row, d in result.get("fold_models", {}).items() for s, f in d.items()}}
    if models:
        lines += ["## Model folders\n"] + [f"- {row}: `{folder}`" for row, folder in models.items()] + [""]
    lines += ["## Split sizes (after caps)\n", "```", yaml.safe_dump(result["split_sizes"], sort_keys=False).rstrip(), "```", ""]
    lines += ["## Training sets for teachers\n"] + [f"- `{name}`: `{teacher_command(f)}`" for name, f in result["folds"].items()]
    return "\n".join(lines) + "\n"


def heatmap_png(result: dict, path: Path) -> None:
    """ROC-AUC of every row (trained on) x column (scored on), the CI under each value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    columns = matrix_columns(rows)
    values = np.array([[cells[c]["roc_auc"]["value"] if c in cells else np.nan for c in columns] for cells in rows.values()])
    fig, ax = plt.subplots(figsize=(1.6 * len(columns) + 2, 0.9 * len(rows) + 1.5))
    image = ax.imshow(values, cmap="viridis", vmin=max(0.5, np.nanmin(values) - 0.02) if np.isfinite(values).any() else 0.5, vmax=1.0)
    for r, cells in enumerate(rows.values()):
        for c, column in enumerate(columns):
            if column in cells:
                m = cells[column]["roc_auc"]
                ax.text(c, r, f"{m['value']:.3f}\n[{m['low']:.3f}, {m['high']:.3f}]", ha="center", va="center", fontsize=7, color="white")
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), list(rows))
    ax.set_title("ROC-AUC [95 % domain-bootstrap CI]")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def teacher_command(fold: dict) -> str:
    """The command that trains a teacher on a fold written by :func:`run_benchmark`."""
    return f"python train_teacher.py --config {fold['config']}"


def row_and_rest(item: str, default: str | None) -> tuple[str | None, str]:
    """``"ROW:REST"`` -> ``(ROW, REST)`` when ROW is a plain name (letters, digits, ``_ .+-``, spaces);
    otherwise ``(default, item)``, so a path with a colon elsewhere stays whole."""
    row, colon, rest = item.partition(":")
    if colon and row and all(c.isalnum() or c in "_ .+-" for c in row) and not Path(item).exists():
        return row, rest
    return default, item


SMOKE = {"max_train_per_class": 300, "max_test_per_class": 300, "n_boot": 50}
"""What ``--smoke`` sets: a run of seconds, to check the wiring, not to measure."""


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m kd.benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="benchmark YAML (e.g. configs/benchmark-multisource.yaml)")
    parser.add_argument("--model", action="append", default=[], metavar="[ROW:]FOLDER",
                        help="a saved classifier folder (teacher, student or quantized) trained on the union, scored on every "
                             "column as row ROW (default: the folder's name); repeatable")
    parser.add_argument("--fold-model", action="append", default=[], metavar="[ROW:]SOURCE=FOLDER",
                        help="the model trained on fold loso-SOURCE, scored on SOURCE's held-out set, in row ROW (default "
                             "'model'); repeatable, e.g. --fold-model student:esdaung=runs/s-esdaung/best")
    parser.add_argument("--out", default="runs/benchmark-multisource", help="output folder (default runs/benchmark-multisource)")
    parser.add_argument("--data-dir", help="folder that relative source paths resolve against")
    parser.add_argument("--max-train-per-class", type=int, help="cap per source and class on train/validation (overrides the config)")
    parser.add_argument("--n-boot", type=int, help="bootstrap replicates (overrides the config)")
    parser.add_argument("--folds-only", action="store_true",
                        help="only write OUT/folds/ (each training set's CSV files and teacher config); score nothing")
    parser.add_argument("--smoke", action="store_true", help=f"tiny caps and few replicates: {SMOKE}")
    args = parser.parse_args(argv)
    with usage_errors():
        cfg = BenchmarkConfig.load(args.config)
        if args.smoke:
            cfg.__dict__.update(SMOKE)
        if args.data_dir:
            cfg.data_dir = args.data_dir
        if args.max_train_per_class is not None:
            cfg.max_train_per_class = args.max_train_per_class
        if args.n_boot is not None:
            cfg.n_boot = args.n_boot
        models = {}
        for item in args.model:
            row, folder = row_and_rest(item, None)
            models[row or (Path(folder).parent.name if Path(folder).name == "best" else Path(folder).name)] = Path(folder)
        fold_models: dict[str, dict[str, Path]] = {}
        for item in args.fold_model:
            row, rest = row_and_rest(item, "model")
            source, eq, folder = rest.partition("=")
            if not eq or source not in cfg.sources:
                raise UsageError(f"--fold-model takes [ROW:]SOURCE=FOLDER with SOURCE one of {list(cfg.sources)}, got {item!r}")
            fold_models.setdefault(row, {})[source] = Path(folder)
        for folder in [*models.values(), *(f for d in fold_models.values() for f in d.values())]:
            if not folder.is_dir():
                raise UsageError(f"model folder {folder}: no such folder")
        check_apart(args.out, "--out", {**{f"--model {row}": f for row, f in models.items()},
                                        **{f"--fold-model {row}:{s}": f for row, d in fold_models.items() for s, f in d.items()}})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = run_benchmark(cfg, out, models, fold_models, folds_only=args.folds_only)
    if args.folds_only:
        print(yaml.safe_dump(result["split_sizes"], sort_keys=False))
        print("\n".join(f"{name}: {teacher_command(f)}" for name, f in result["folds"].items()))
        return result
    write_json(out / "benchmark.json", result)
    report = markdown_report(result)
    with written_beside(out / "benchmark.md") as tmp:
        tmp.write_text(report)
    heatmap_png(result, out / "benchmark.png")
    print(report)
    print(f"wrote {out / 'benchmark.md'}, benchmark.json, benchmark.png and folds/")
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="python -m kd.benchmark"))
