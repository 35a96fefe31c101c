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


def refusal(main, argv, capsys) -> str:
    """The one stderr line of ``main(argv)`` run as a command, which must exit 2."""
    assert run_cli(main, argv, prog="cmd") == 2
    err = capsys.readouterr().err
    assert err.startswith("cmd: error: ") and err.count("\n") == 1, err
    return err


def test_a_max_length_beyond_the_position_table_is_refused_up_front(model_dir, tmp_path, capsys):
    import quantize
    from conftest import make_url_rows, write_csv
    from kd.evaluate import main as evaluate
    from kd.predict import main as predict

    data = write_csv(tmp_path / "urls.csv", make_url_rows(60))
    data_args = ["--set", f"data.sources=[{data}]", "--set", "data.split=random"]
    for main, argv in [(predict, ["--model", str(model_dir), URLS[0]]),
                       (evaluate, ["--model", str(model_dir), *data_args, "--out", str(tmp_path / "eval")]),
                       (quantize.main, ["--student", str(model_dir), *data_args, "--out", str(tmp_path / "quantized")])]:
        assert "position table holds 160 tokens" in refusal(main, [*argv, "--max-length", "161"], capsys)
    assert not (tmp_path / "eval").exists() and not (tmp_path / "quantized").exists()


@pytest.fixture(scope="module")
def nf4_dir(checkpoint_dir, tmp_path_factory):
    from models.quantized import save_quantized

    return save_quantized(*load_classifier(checkpoint_dir, "nf4"), tmp_path_factory.mktemp("nf4") / "nf4")


def with_weights(model_dir, folder, write):
    """A copy of ``model_dir`` whose model.safetensors is replaced by ``write(path, original_bytes)``."""
    shutil.copytree(model_dir, folder)
    weights = folder / "model.safetensors"
    original = weights.read_bytes()
    weights.unlink()
    write(weights, original)
    return folder


@pytest.mark.parametrize("damage, message", [
    (lambda path, data: path.write_bytes(data[: len(data) // 2]), "not a readable safetensors file"),
    (lambda path, data: path.write_bytes(b"\x00" * 64), "not a readable safetensors file"),
    (lambda path, data: path.symlink_to("/etc/passwd"), "not a readable safetensors file"),
    (lambda path, data: path.symlink_to("/dev/zero"), "not a regular file"),
    (lambda path, data: (path.parent / "pytorch_model.bin").write_bytes(b"pickle"), "safetensors only"),
])
def test_weights_that_cannot_be_read_safely_are_refused_in_one_line(model_dir, tmp_path, capsys, damage, message):
    from kd.predict import main

    folder = with_weights(model_dir, tmp_path / "damaged", damage)
    assert message in refusal(main, ["--model", str(folder), URLS[0]], capsys)
    with pytest.raises(ModelFolderError, match=message):
        load_frozen_classifier(folder)


def test_a_quantized_folder_with_altered_skip_modules_is_refused(nf4_dir, tmp_path, capsys):
    from kd.predict import main

    load_classifier(nf4_dir)
    config = json.loads((nf4_dir / "config.json").read_text())
    config["quantization_config"]["llm_int8_skip_modules"] = ["pooler.dense"]
    folder = copy_with_config(nf4_dir, tmp_path / "altered", quantization_config=config["quantization_config"])
    assert "llm_int8_skip_modules" in refusal(main, ["--model", str(folder), URLS[0]], capsys)
