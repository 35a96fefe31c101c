"""Report writers, one each: the fixed-width metrics table printed after a run,
Markdown tables, CSV files and JSON files."""
from __future__ import annotations

import csv
import json
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

METRIC_COLUMNS = (("n", "n"), ("accuracy", "acc"), ("precision", "prec"), ("recall", "recall"), ("f1", "F1"),
                  ("roc_auc", "ROC-AUC"), ("pr_auc", "PR-AUC"), ("tpr_at_1pct_fpr", "TPR@1%"),
                  ("tpr_at_0.1pct_fpr", "TPR@.1%"), ("ece", "ECE"))
"""``(metric key, column title)`` of :func:`format_table`."""


def format_table(results: dict, title: str = "") -> str:
    """A fixed-width table of the headline metrics per evaluated set
    (``results[set name]`` as :func:`kd.eval.metrics.binary_metrics` gives them)."""
    head = f"{'set':<22}" + "".join(f"{title_:>10}" for _, title_ in METRIC_COLUMNS)
    lines = [title, head, "-" * len(head)] if title else [head, "-" * len(head)]
    for name, m in results.items():
        cells = [f"{m['n']:>10d}"] + [f"{m[key]:>10.4f}" for key, _ in METRIC_COLUMNS[1:]]
        lines.append(f"{name:<22}" + "".join(cells))
    return "\n".join(lines)


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[str]], right: Sequence[bool] | None = None) -> str:
    """A Markdown table of already formatted cells; ``right[i]`` right-aligns column i.
    A row with more or fewer cells than ``columns`` is a ``ValueError``: it would shift its values under the wrong headers."""
    right = right or [False] * len(columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "".join("---:|" if r else "---|" for r in right)]
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"a table row has {len(row)} cells for {len(columns)} columns: {list(row)}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path) -> None:
    """``rows`` as a CSV file with the first row's keys as the header."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def temp_path_beside(path: Path) -> Path:
    """A hidden name beside ``path`` that no file has yet (``uuid4``): created with ``x``
    (or ``mkdir``) by its caller, so a temporary never writes through, or is removed
    from, a file or folder that the call did not create itself."""
    path = Path(path)
    return path.resolve().parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"


@contextmanager
def written_beside(path: Path) -> Iterator[Path]:
    """Yield a new, empty temporary file beside ``path`` (:func:`temp_path_beside`, created
    by this call) for the caller to fill; rename it to ``path`` when the block ends, or
    remove it if the block raises, so ``path`` is replaced whole or not at all."""
    path = Path(path)
    tmp = temp_path_beside(path)
    with open(tmp, "x", encoding="utf-8"):  # created by this call: the only file the except below removes
        pass
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half-written temporary
        raise


def write_json(path: Path, payload) -> None:
    """Write JSON atomically (:func:`written_beside`)."""
    with written_beside(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
