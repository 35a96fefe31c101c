"""How much of a URL set a vocabulary-pruned student reads differently from its teacher.

``student.prune_vocab`` keeps only the WordPiece tokens of the training URLs
(models/vocabulary.py). A URL whose words all use kept pieces is segmented as
the teacher segments it; any other URL is re-segmented over the kept pieces, or
gets ``[UNK]``. For each ``STUDENT_RUN CSV`` pair this counts, over the CSV's
``url`` column (every k-th row, at most ``--max-urls``), the share of URLs whose
token sequence differs from the teacher's and the share with an ``[UNK]`` the
teacher does not have. The teacher is the run's ``teacher:`` (its config.yaml).

    python benchmarks/vocab_coverage.py \\
        runs/multisource/student-loso-phishstorm runs/multisource/bench/folds/loso-phishstorm/test-phishstorm.csv \\
        --out benchmarks/vocab-coverage.md
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kd.eval.report import markdown_table  # noqa: E402


def coverage(student_run: Path, urls_csv: Path, max_urls: int) -> dict:
    """``{"urls", "kept_rows", "teacher_rows", "segmented_differently", "with_new_unk"}`` for one pair."""
    from transformers import AutoTokenizer

    teacher_dir = yaml.safe_load((student_run / "config.yaml").read_text())["teacher"]
    teacher, student = AutoTokenizer.from_pretrained(teacher_dir), AutoTokenizer.from_pretrained(student_run / "best")
    with open(urls_csv, newline="", encoding="utf-8") as f:
        urls = [row["url"] for row in csv.DictReader(f)]
    urls = urls[::-(-len(urls) // max_urls)] if urls else urls  # evenly spread: the files are not shuffled
    if not urls:
        raise SystemExit(f"{urls_csv}: no URLs in its url column")
    tokens_t = [teacher.convert_ids_to_tokens(ids) for ids in teacher(urls, truncation=True, max_length=128)["input_ids"]]
    tokens_s = [student.convert_ids_to_tokens(ids) for ids in student(urls, truncation=True, max_length=128)["input_ids"]]
    unk = teacher.unk_token
    return {"urls": len(urls), "kept_rows": len(student), "teacher_rows": len(teacher),
            "segmented_differently": sum(a != b for a, b in zip(tokens_t, tokens_s)) / len(urls),
            "with_new_unk": sum(unk in b and unk not in a for a, b in zip(tokens_t, tokens_s)) / len(urls)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", nargs="+", metavar="STUDENT_RUN CSV", help="a pruned student's run folder, then a URL CSV")
    parser.add_argument("--max-urls", type=int, default=20000, help="URLs taken from each CSV, every k-th row (default 20000)")
    parser.add_argument("--out", type=Path, help="write this Markdown page and a .json beside it")
    args = parser.parse_args(argv)
    if len(args.pairs) % 2:
        parser.error("give STUDENT_RUN CSV pairs")
    rows = []
    for run, urls_csv in zip(args.pairs[::2], args.pairs[1::2]):
        result = {"student_run": run, "urls_csv": urls_csv, **coverage(Path(run), Path(urls_csv), args.max_urls)}
        rows.append(result)
        print(f"{run}: {result['segmented_differently']:.1%} of {result['urls']} URLs segmented differently, "
              f"{result['with_new_unk']:.1%} with a new [UNK]", flush=True)
    table = markdown_table(
        ["student run", "URLs", "vocabulary rows kept", "segmented differently", "with a new [UNK]"],
        [[Path(r["student_run"]).name, f"{r['urls']:,}", f"{r['kept_rows']:,} of {r['teacher_rows']:,}",
          f"{r['segmented_differently']:.1%}", f"{r['with_new_unk']:.1%}"] for r in rows], right=[False] + [True] * 4)
    print(table)
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
        args.out.write_text("# Vocabulary coverage of pruned students\n\n"
                            "Share of URLs that a vocabulary-pruned student tokenizes differently from its teacher "
                            f"(`benchmarks/vocab_coverage.py`, at most {args.max_urls:,} URLs per set).\n\n{table}\n")


if __name__ == "__main__":
    main()
