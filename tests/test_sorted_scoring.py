"""Length-sorted scoring with the input order restored, streamed in bounded
windows, and sharded over processes under torchrun (issue 15)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import save_tiny_classifier
from transformers import BertConfig, BertForSequenceClassification

import kd.predict
from kd.data.batching import TokenizedSet, eval_batches, padding_fraction, windows
from kd.eval.inference import predict_tokenized

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_lengths_set(n: int, seed: int = 0) -> TokenizedSet:
    """``n`` token sequences of 3 to 60 tokens in random order (not sorted)."""
    rng = np.random.default_rng(seed)
    ids = [[1, *rng.integers(5, 60, size=rng.integers(1, 58)).tolist(), 2] for _ in range(n)]
    return TokenizedSet(ids, np.zeros(n, dtype=np.int64), pad_token_id=0)


@pytest.mark.parametrize("batch_size", [1, 3, 16, 100])
def test_sorted_batches_give_each_example_its_own_logits_in_input_order(batch_size):
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=64)).eval()
    data = random_lengths_set(40)
    with torch.no_grad():  # one example at a time: no padding, no sorting
        alone = torch.cat([model(input_ids=torch.tensor([ids])).logits for ids in data.input_ids])
    torch.testing.assert_close(predict_tokenized(model, data, batch_size=batch_size), alone, rtol=1e-4, atol=1e-5)


def test_a_model_in_training_mode_is_scored_without_dropout():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, hidden_dropout_prob=0.5)
    model = BertForSequenceClassification(config)
    data = random_lengths_set(8)
    reference = predict_tokenized(model.eval(), data)
    model.train()
    torch.testing.assert_close(predict_tokenized(model, data), reference)  # dropout off: the same logits
    assert not model.training


def test_sorted_batches_pad_less_than_batches_in_input_order():
    data = random_lengths_set(512)
    in_order = [np.arange(i, min(i + 32, 512)) for i in range(0, 512, 32)]
    assert padding_fraction(data.lengths, eval_batches(data.lengths, 32)) < padding_fraction(data.lengths, in_order) / 4


def test_windows_cut_a_stream_lazily():
    pulled = []

    def stream():
        for i in range(10):
            pulled.append(i)
            yield i

    seen = []
    for window in windows(stream(), 4):
        assert len(pulled) == len(seen) + len(window)  # nothing read past this window
        seen.extend(window)
    assert seen == list(range(10))
    with pytest.raises(ValueError, match="at least 1"):
        next(windows([1], 0))


def test_a_long_file_is_scored_one_window_at_a_time(tmp_path, monkeypatch):
    """Count the rows read from the file when each window is scored: never more
    than one window ahead of what was scored, and every URL scored once, in order."""
    n, window = 5000, 512
    source = tmp_path / "urls.txt"
    source.write_text("".join(f"host{i}.example.com/{'p/' * (i % 37)}\n" for i in range(n)))
    read, calls = [0], []
    read_rows = kd.predict.read_rows

    def counting_rows(*args, **kwargs):
        for row in read_rows(*args, **kwargs):
            read[0] += 1
            yield row

    def fake_predict_proba(model, tokenizer, texts, **kwargs):
        calls.append((read[0], len(texts)))
        return np.full(len(texts), 0.25)

    monkeypatch.setattr(kd.predict, "read_rows", counting_rows)
    monkeypatch.setattr(kd.predict, "predict_proba", fake_predict_proba)
    counts = kd.predict.score_file(None, None, source, tmp_path / "s.csv", tmp_path / "r.csv", chunk_rows=window)
    assert counts.scored == n and counts.rejected == 0
    assert [size for _, size in calls] == [window] * (n // window) + [n % window]
    for k, (rows_read, _) in enumerate(calls, start=1):
        assert rows_read <= k * window
    lines = (tmp_path / "s.csv").read_text().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in lines] == list(range(1, n + 1))


def run_predict(args: list[str], nproc: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    launcher = [sys.executable, "-m", "kd.predict"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "kd.predict"]
    return subprocess.run([*launcher, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_two_processes_write_the_same_files_as_one(tmp_path):
    model = save_tiny_classifier(tmp_path / "model")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(203):
        lines.append(f"site{i}.example.com/{'a' * int(rng.integers(0, 60))}?q={i}" if i % 17 else
                     ("" if i % 2 else "tab\there.com"))  # a blank line or a reject now and then
    source = tmp_path / "urls.txt"
    source.write_text("\n".join(lines) + "\n")
    outputs = {}
    for nproc in (1, 2):
        out = tmp_path / f"scores{nproc}.csv"
        done = run_predict(["--model", str(model), "--input", str(source), "--output", str(out),
                            "--chunk-rows", "16", "--batch-size", "8"], nproc)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs[nproc] = (out.read_bytes(), out.with_suffix(".rejects.csv").read_bytes())
        assert done.stderr.count(f"read {len(lines)} rows") == 1  # rank 0 reports the counts summed over ranks
        assert ("2 processes" in done.stderr) == (nproc == 2)
    assert outputs[2] == outputs[1]
    assert outputs[1][1].count(b"\n") > 1  # the rejects are compared too, not two empty files
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no part is left behind


def test_urls_on_the_command_line_are_refused_under_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as exit_:
        kd.predict.main(["--model", "m", "example.com"])
    assert exit_.value.code == 2
    assert "--input" in capsys.readouterr().err
