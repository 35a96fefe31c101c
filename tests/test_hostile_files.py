"""Model folders are input like any other file (issue 12): a folder that asks to
run its own code is refused without a prompt, and a tokenizer that does not fit
its model is refused instead of scoring every URL as [UNK]."""
import json
import shutil
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO_ROOT, make_url_rows, save_tiny_classifier, write_csv

from models.paths import ModelFolderError, check_tokenizer

EVIL_CODE = """\
from pathlib import Path
Path({marker!r}).write_text("the folder's code ran")
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer
class EvilConfig(BertConfig):
    model_type = "evilbert"
class EvilModel(BertForSequenceClassification):
    config_class = EvilConfig
class EvilTokenizer(BertTokenizer):
    pass
"""

LOADERS = {
    "models.encoder.load_tokenizer": "from models.encoder import load_tokenizer; load_tokenizer(FOLDER)",
    "models.encoder.build_classifier": "from models.encoder import build_classifier; build_classifier(FOLDER)",
    "models.encoder.load_frozen_classifier": "from models.encoder import load_frozen_classifier; load_frozen_classifier(FOLDER)",
    "models.quantized.load_classifier": "from models.quantized import load_classifier; load_classifier(FOLDER)",
    "models.quantized.saved_precision": "from models.quantized import saved_precision; saved_precision(FOLDER)",
    "models.student.student_from_config": "from models.student import student_from_config; student_from_config(FOLDER)",
    "models.causal_lm.load_causal_tokenizer": "from models.causal_lm import load_causal_tokenizer; load_causal_tokenizer(FOLDER)",
    "models.causal_lm.load_causal_lm": "from models.causal_lm import load_causal_lm; load_causal_lm(FOLDER)",
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_classifier(tmp_path_factory.mktemp("tiny"))


def evil_folder(model_dir, root, where: str):
    """A copy of ``model_dir`` whose ``where`` file (config.json or tokenizer_config.json)
    maps its classes to ``evil_code.py``, which writes ``root/MARKER`` when imported."""
    folder = root / f"evil-{where}"
    shutil.copytree(model_dir, folder)
    file = folder / where
    content = json.loads(file.read_text())
    if where == "config.json":
        content["model_type"] = "evilbert"
        content["auto_map"] = {"AutoConfig": "evil_code.EvilConfig",
                               "AutoModelForSequenceClassification": "evil_code.EvilModel",
                               "AutoModelForCausalLM": "evil_code.EvilModel"}
    else:
        content["auto_map"] = {"AutoTokenizer": ["evil_code.EvilTokenizer", None]}
    file.write_text(json.dumps(content))
    (folder / "evil_code.py").write_text(EVIL_CODE.format(marker=str(root / "MARKER")))
    return folder


@pytest.mark.parametrize("where", ["config.json", "tokenizer_config.json"])
def test_no_loader_runs_a_folders_code_even_when_stdin_says_yes(model_dir, tmp_path, where):
    """Each loader in a fresh process whose stdin answers "y" to any prompt
    (transformers asks "run the custom code? [y/N]" when trust_remote_code is
    not given): every one refuses with the auto_map message, and the folder's
    code never runs."""
    folder = evil_folder(model_dir, tmp_path, where)
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        FOLDER, MARKER, results = {str(folder)!r}, Path({str(tmp_path / "MARKER")!r}), {{}}
        for name, code in {LOADERS!r}.items():
            try:
                exec(code)
                results[name] = ["loaded", ""]
            except BaseException as err:
                results[name] = [type(err).__name__, str(err)]
            results[name].append(MARKER.exists())
        print("RESULTS" + json.dumps(results))
    """)
    proc = subprocess.run([sys.executable, "-c", script], input="y\n" * 100, capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                                                           "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULTS")), None)
    assert line, proc.stdout + proc.stderr
    results = json.loads(line.removeprefix("RESULTS"))
    assert set(results) == set(LOADERS)
    for name, (kind, message, marker_written) in results.items():
        assert not marker_written, f"{name} ran the folder's code"
        assert kind == "ModelFolderError" and "auto_map" in message and "trust_remote_code=False" in message, (name, kind, message)
    assert not (tmp_path / "MARKER").exists()
    assert "[y/N]" not in proc.stdout + proc.stderr  # nobody was asked


@pytest.fixture(scope="module")
def no_tokenizer_dir(model_dir, tmp_path_factory):
    """The tiny classifier without tokenizer.json (and without vocab.txt): transformers 5
    then builds a 5-token vocabulary and maps every URL to [UNK]."""
    folder = tmp_path_factory.mktemp("no-tokenizer") / "model"
    shutil.copytree(model_dir, folder)
    for name in ("tokenizer.json", "vocab.txt"):
        (folder / name).unlink(missing_ok=True)
    return folder


def test_predict_refuses_a_folder_without_its_tokenizer(no_tokenizer_dir, capsys):
    from kd.errors import run_cli
    from kd.predict import main

    status = run_cli(main, ["--model", str(no_tokenizer_dir), "paypal.com.verify-account.xyz/login"], prog="predict")
    captured = capsys.readouterr()
    assert status == 2 and "probability" not in captured.out
    assert "5 tokens but the model has 141 embedding rows" in captured.err and captured.err.count("\n") == 1


def test_evaluate_refuses_a_folder_without_its_tokenizer(no_tokenizer_dir, tmp_path):
    from kd.evaluate import main

    data = write_csv(tmp_path / "urls.csv", make_url_rows(60))
    with pytest.raises(ModelFolderError, match="5 tokens but the model has 141 embedding rows"):
        main(["--model", str(no_tokenizer_dir), "--set", f"data.sources=[{data}]", "--set", "data.split=random",
              "--out", str(tmp_path / "eval")])
    assert not (tmp_path / "eval").exists()


def test_the_student_recipe_refuses_a_teacher_without_its_tokenizer(no_tokenizer_dir, tmp_path):
    import train_student

    data = write_csv(tmp_path / "urls.csv", make_url_rows(60))
    with pytest.raises(ModelFolderError, match="5 tokens but the model has 141 embedding rows"):
        train_student.main(["--teacher", str(no_tokenizer_dir), "--out", str(tmp_path / "student"),
                            "--set", f"data.sources=[{data}]", "--set", "data.split=random",
                            "--set", "student.num_layers=1", "--set", "train.max_steps=1", "--set", "train.batch_size=16",
                            "--set", "distill.augment_copies=0", "--set", f"distill.cache_dir={tmp_path / 'cache'}"])
    assert not (tmp_path / "student" / "last").exists()


class Tokenizer:
    """Stands in for a tokenizer: a length and special tokens."""

    def __init__(self, size, **special):
        self.size = size
        self.__dict__.update(special)

    def __len__(self):
        return self.size


class Config:
    def __init__(self, vocab_size):
        self.vocab_size = vocab_size


ENCODER_SPECIAL = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]"}


@pytest.mark.parametrize("size,rows,special,causal,ok", [
    (8367, 8367, ENCODER_SPECIAL, False, True),  # a vocabulary-pruned student with its own tokenizer
    (50280, 50368, ENCODER_SPECIAL, False, True),  # embedding rows padded to a multiple of 64
    (5, 30522, ENCODER_SPECIAL, False, False),  # tokenizer.json missing: transformers 5's fallback
    (30523, 30522, ENCODER_SPECIAL, False, False),  # ids past the last embedding row
    (30522, 30522, {"pad_token": "[PAD]", "unk_token": "[UNK]"}, False, False),  # no cls token
    (49152, 49152, {"eos_token": "<|im_end|>"}, True, True),  # a causal LM pads with eos
    (49152, 49152, {}, True, False),  # neither pad nor eos
])
def test_check_tokenizer(size, rows, special, causal, ok):
    tokenizer = Tokenizer(size, **special)
    if ok:
        check_tokenizer(tokenizer, Config(rows), "m", causal=causal)
    else:
        with pytest.raises(ModelFolderError):
            check_tokenizer(tokenizer, Config(rows), "m", causal=causal)


def test_a_path_that_is_no_folder_says_so():
    from models.paths import resolve_model_path

    for path in ("runs/teacher-minilm/no-such-best", "/no/such/folder", "./missing", "packaged:nothing"):
        with pytest.raises(ModelFolderError, match="no such folder|unknown packaged model"):
            resolve_model_path(path)
    assert resolve_model_path("bert-base-uncased") == "bert-base-uncased"  # a hub id stays one
    assert resolve_model_path("google/electra-small-discriminator") == "google/electra-small-discriminator"
