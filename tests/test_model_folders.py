"""Model folders that are what they claim: the label order in config.json, the
tokenizer the weights were saved with, and one-line refusals of folders and
options the model cannot serve (issues 22 and 23)."""
import json
import shutil

import numpy as np
import pytest
from conftest import save_tiny_classifier

from kd.errors import run_cli
from kd.eval.inference import predict_proba
from models.encoder import load_frozen_classifier, phishing_index
from models.paths import ModelFolderError
from models.quantized import load_classifier

URLS = ["https://www.paypal.com.verify-account.xyz/login/", "example.org", "github.com/pytorch/pytorch/issues/1"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_classifier(tmp_path_factory.mktemp("folders") / "model")


def copy_with_config(model_dir, folder, **changes):
    """A copy of ``model_dir`` in ``folder`` whose config.json has ``changes``."""
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def with_labels(model_dir, folder, names):
    return copy_with_config(model_dir, folder, id2label={str(i): n for i, n in enumerate(names)},
                            label2id={n: i for i, n in enumerate(names)})


def test_scores_follow_the_label_order_of_the_config(model_dir, tmp_path):
    inverted = with_labels(model_dir, tmp_path / "inverted", ["phishing", "legitimate"])
    expected = predict_proba(*load_classifier(model_dir), URLS)
    np.testing.assert_allclose(predict_proba(*load_classifier(inverted), URLS), 1 - expected, atol=1e-6)


@pytest.mark.parametrize("names, index", [
    (["LABEL_0", "LABEL_1"], 1), (["legitimate", "phishing"], 1), (["Benign", "Malicious"], 1),
    (["bad", "good"], 0), (["1", "0"], 0), (["phishing", "legitimate"], 0),
    (["cat", "dog"], None), (["phishing", "phishing"], None), (["LABEL_0", "phishing"], 1),
])
def test_phishing_index(names, index):
    from transformers import BertConfig

    config = BertConfig(id2label=dict(enumerate(names)))
    if index is None:
        with pytest.raises(ModelFolderError, match="id2label"):
            phishing_index(config)
    else:
        assert phishing_index(config) == index


def test_labels_that_do_not_say_which_is_phishing_are_refused(model_dir, tmp_path, capsys):
    from kd.predict import main

    folder = with_labels(model_dir, tmp_path / "pets", ["cat", "dog"])
    assert run_cli(main, ["--model", str(folder), URLS[0]], prog="predict") == 2
    err = capsys.readouterr().err
    assert "id2label" in err and "cat" in err and err.count("\n") == 1


def test_a_model_with_three_labels_is_refused(model_dir, tmp_path, capsys):
    from kd.predict import main

    folder = with_labels(model_dir, tmp_path / "three", ["legitimate", "phishing", "spam"])
    assert run_cli(main, ["--model", str(folder), URLS[0]], prog="predict") == 2
    err = capsys.readouterr().err
    assert "3 labels" in err and err.count("\n") == 1


def test_a_teacher_with_another_label_order_is_refused(model_dir, tmp_path):
    inverted = with_labels(model_dir, tmp_path / "inverted", ["phishing", "legitimate"])
    with pytest.raises(ModelFolderError, match="column 0"):
        load_frozen_classifier(inverted)
    load_frozen_classifier(model_dir)


def save_bin_classifier(folder, seed):
    """:func:`save_tiny_classifier` with its weights as ``pytorch_model.bin`` only, as older
    transformers saved them (transformers 5 writes safetensors only)."""
    import torch
    from safetensors.torch import load_file

    save_tiny_classifier(folder, seed=seed)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


def test_the_teacher_cache_tells_apart_teachers_that_differ_in_weights_config_or_tokenizer(model_dir, tmp_path):
    from kd.train.teacher_cache import model_fingerprint

    first, second = (save_bin_classifier(tmp_path / f"bin-{seed}", seed) for seed in (0, 1))
    assert not list(first.glob("*.safetensors")) and (first / "pytorch_model.bin").is_file()
    inverted = with_labels(model_dir, tmp_path / "inverted", ["phishing", "legitimate"])
    other_vocab = tmp_path / "other-vocab"
    shutil.copytree(model_dir, other_vocab)
    vocab = json.loads((other_vocab / "tokenizer.json").read_text())
    vocab["model"]["vocab"] = {token: len(vocab["model"]["vocab"]) - 1 - i for token, i in vocab["model"]["vocab"].items()}
    (other_vocab / "tokenizer.json").write_text(json.dumps(vocab))
    prints = [model_fingerprint(folder, 64) for folder in (first, second, model_dir, inverted, other_vocab)]
    assert len(set(prints)) == len(prints)
    assert model_fingerprint(first, 64) == model_fingerprint(first, 64) != model_fingerprint(first, 128)


def permute_vocabulary(folder):
    """Reverse the ids of ``folder``'s tokenizer.json vocabulary: same size, another tokenizer."""
    spec = json.loads((folder / "tokenizer.json").read_text())
    size = len(spec["model"]["vocab"])
    spec["model"]["vocab"] = {token: size - 1 - i for token, i in spec["model"]["vocab"].items()}
    (folder / "tokenizer.json").write_text(json.dumps(spec))


@pytest.fixture(scope="module")
def checkpoint_dir(model_dir, tmp_path_factory):
    """``model_dir`` saved as training saves its checkpoints (kd.train.run.make_saver)."""
    from transformers import AutoModelForSequenceClassification

    from models.encoder import load_tokenizer
    from kd.train.run import make_saver

    folder = tmp_path_factory.mktemp("checkpoint") / "best"
    make_saver(load_tokenizer(str(model_dir)), {})(AutoModelForSequenceClassification.from_pretrained(model_dir), folder)
    return folder


def recorded_fingerprint(folder):
    return json.loads((folder / "config.json").read_text()).get("tokenizer_fingerprint")


def test_a_same_size_tokenizer_from_another_model_is_refused(checkpoint_dir, tmp_path, capsys):
    from kd.predict import main

    load_classifier(checkpoint_dir)
    folder = tmp_path / "permuted"
    shutil.copytree(checkpoint_dir, folder)
    permute_vocabulary(folder)
    with pytest.raises(ModelFolderError, match="not the one its weights were saved with"):
        load_classifier(folder)
    with pytest.raises(ModelFolderError, match="not the one its weights were saved with"):
        load_frozen_classifier(folder)
    assert run_cli(main, ["--model", str(folder), URLS[0]], prog="predict") == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_every_save_path_records_the_tokenizer_it_saves(checkpoint_dir, tmp_path):
    from models.paths import tokenizer_fingerprint
    from models.quantized import save_quantized
    from models.vocabulary import prune_vocabulary, token_ids_in

    model, tokenizer = load_classifier(checkpoint_dir)
    expected = tokenizer_fingerprint(tokenizer)
    assert recorded_fingerprint(checkpoint_dir) == expected
    for precision in ("fp32", "nf4", "dynamic-int8"):
        variant = save_quantized(*load_classifier(checkpoint_dir, precision), tmp_path / precision)
        assert recorded_fingerprint(variant) == expected, precision
        load_classifier(variant)
    pruned, pruned_tokenizer = prune_vocabulary(model, tokenizer, token_ids_in(URLS, tokenizer), tmp_path / "pruned")
    assert recorded_fingerprint(tmp_path / "pruned") == tokenizer_fingerprint(pruned_tokenizer) != expected
    load_classifier(tmp_path / "pruned")


def test_the_fingerprint_is_the_same_for_the_same_tokenizer_saved_twice(checkpoint_dir, tmp_path):
    from transformers import AutoTokenizer

    from models.paths import tokenizer_fingerprint

    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir)
    tokenizer.save_pretrained(tmp_path / "again")
    assert tokenizer_fingerprint(AutoTokenizer.from_pretrained(tmp_path / "again")) == tokenizer_fingerprint(tokenizer)


def test_a_folder_without_a_recorded_fingerprint_still_loads(model_dir):
    assert recorded_fingerprint(model_dir) is None
    load_classifier(model_dir)
