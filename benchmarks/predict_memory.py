"""Peak memory of ``python -m kd.predict --input FILE`` as the file grows: constant,
since rows are read, length-sorted and scored one window (``--chunk-rows``) at a time.

A tiny random BERT (2 layers, 64 wide, the packaged MiniLM's tokenizer) scores
generated URLs, so the run measures the streaming, not the model. Each size runs
in its own process; its peak RSS is read from ``getrusage``.

    python benchmarks/predict_memory.py --sizes 100000,1000000
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_urls(path: Path, n: int, seed: int = 0) -> None:
    """``n`` URLs of 1-12 path words, written a block at a time."""
    rng = np.random.default_rng(seed)
    words = np.array(["login", "verify", "secure", "account", "update", "bank", "blog", "news", "docs", "shop"])
    with path.open("w") as handle:
        for start in range(0, n, 100_000):
            handle.writelines(f"host{i}.example.com/{'/'.join(rng.choice(words, size=rng.integers(1, 13)))}?id={i}\n"
                              for i in range(start, min(n, start + 100_000)))


def tiny_model(folder: Path) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    from models.encoder import load_tokenizer

    tokenizer = load_tokenizer("packaged:minilm")
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="URL counts, comma-separated (default: %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kd-predict-memory-") as tmp:
        model = tiny_model(Path(tmp) / "model")
        for n in (int(s) for s in args.sizes.split(",")):
            source, out = Path(tmp) / f"urls{n}.txt", Path(tmp) / f"scores{n}.csv"
            write_urls(source, n)
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "kd.predict", "--model", str(model), "--input", str(source),
                            "--output", str(out), "--device", "cpu"], cwd=ROOT, check=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
            seconds = time.perf_counter() - started
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child so far, MiB
            rows = sum(1 for _ in out.open()) - 1
            print(f"{n:>9,} URLs ({source.stat().st_size / 2**20:,.0f} MiB): {rows:,} scored in {seconds:,.0f} s, "
                  f"peak RSS of the largest run so far {peak:,.0f} MiB", flush=True)
            source.unlink()
            out.unlink()


if __name__ == "__main__":
    main()
