"""Which URLs a leave-one-source-out model gets wrong on the source it never saw, and how they differ.

For each run folder given (a teacher or student trained on a ``loso-SOURCE``
fold of ``kd.benchmark``), reads its per-URL scores (``scores.csv.gz``) and
threshold (``results.json``) on the held-out source, and reports: the error
rates at the deployed threshold; the threshold that would have maximised F1 on
that source (what a security team would get by tuning on its own traffic);
simple URL features of the false alarms beside the correctly passed
legitimate URLs, and of the missed phishing beside the caught phishing; and
the highest-scored legitimate and lowest-scored phishing URLs.

    python benchmarks/multisource_errors.py runs/teacher-loso-esdaung runs/teacher-loso-iscx_phishtank \\
        --out benchmarks/multisource-errors.md
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kd.eval.metrics import choose_threshold  # noqa: E402
from kd.eval.report import markdown_table  # noqa: E402
from kd.eval.scoring import SCORES_FILE, read_scores  # noqa: E402


def features(url: str) -> dict[str, float]:
    """Length, path depth, query, digits in the host, and whether the host is an IP address."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    host = parts.hostname or ""
    return {"length": len(url), "path depth": len([p for p in parts.path.split("/") if p]), "has query": float(bool(parts.query)),
            "host labels": len(host.split(".")), "IP host": float(host.replace(".", "").isdigit())}


def mean_features(urls: list[str]) -> dict[str, float]:
    rows = [features(u) for u in urls] or [dict.fromkeys(features("a.b"), float("nan"))]
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def analyse(run: Path, examples: int) -> tuple[str, dict]:
    results = json.loads((run / "results.json").read_text())
    threshold = float(results["threshold"])
    scores = read_scores(run / SCORES_FILE)
    source = next(name for name in scores if name != "validation")
    urls, labels, probs = scores[source]["urls"], scores[source]["labels"], scores[source]["probs"]
    flagged = probs >= threshold
    fp, tn = [u for u, y, f in zip(urls, labels, flagged) if y == 0 and f], [u for u, y, f in zip(urls, labels, flagged) if y == 0 and not f]
    fn, tp = [u for u, y, f in zip(urls, labels, flagged) if y == 1 and not f], [u for u, y, f in zip(urls, labels, flagged) if y == 1 and f]
    own = choose_threshold(labels, probs)
    own_flagged = probs >= own

    def f1(pred):
        tp_, fp_, fn_ = int((pred & (labels == 1)).sum()), int((pred & (labels == 0)).sum()), int((~pred & (labels == 1)).sum())
        return 2 * tp_ / max(1, 2 * tp_ + fp_ + fn_)

    summary = {"run": str(run), "source": source, "threshold": threshold, "legitimate": int((labels == 0).sum()),
               "phishing": int((labels == 1).sum()), "fpr": len(fp) / max(1, len(fp) + len(tn)), "fnr": len(fn) / max(1, len(fn) + len(tp)),
               "f1": f1(flagged), "own_threshold": own, "f1_at_own_threshold": f1(own_flagged)}
    groups = {"false alarms (legitimate, flagged)": fp, "legitimate passed": tn, "missed phishing": fn, "phishing caught": tp}
    table = markdown_table(("URLs", "n", *features("a.b")),
                           [[name, str(len(g)), *(f"{v:.2f}" for v in mean_features(g).values())] for name, g in groups.items()],
                           right=[False] + [True] * 6)
    order = np.argsort(probs)
    top_legit = [(urls[i], probs[i]) for i in order[::-1] if labels[i] == 0][:examples]
    low_phish = [(urls[i], probs[i]) for i in order if labels[i] == 1][:examples]
    text = (f"## {source} (held out), `{run}`\n\n{summary['legitimate']:,} legitimate, {summary['phishing']:,} phishing; "
            f"deployed threshold {threshold:.3f} (chosen on the other sources' validation URLs): FPR {summary['fpr']:.3f}, "
            f"FNR {summary['fnr']:.3f}, F1 {summary['f1']:.3f}. The threshold best for this source would be {own:.3f} "
            f"(F1 {summary['f1_at_own_threshold']:.3f}).\n\n{table}\n\nHighest-scored legitimate URLs:\n\n"
            + "\n".join(f"- `{u[:120]}` {p:.3f}" for u, p in top_legit)
            + "\n\nLowest-scored phishing URLs:\n\n" + "\n".join(f"- `{u[:120]}` {p:.3f}" for u, p in low_phish) + "\n")
    return text, summary


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of leave-one-source-out models")
    parser.add_argument("--examples", type=int, default=8, help="URLs listed per kind (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="Markdown report (+ .json beside it)")
    args = parser.parse_args(argv)
    texts, summaries = zip(*(analyse(run, args.examples) for run in args.runs))
    report = "# Errors on held-out sources\n\n" + "\n".join(texts)
    print(report)
    if args.out:
        args.out.write_text(report)
        args.out.with_suffix(".json").write_text(json.dumps(list(summaries), indent=2) + "\n")
    return list(summaries)


if __name__ == "__main__":
    main()
