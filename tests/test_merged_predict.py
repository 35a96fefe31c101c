"""A QLoRA folder (adapters, or merged by ``python -m kd.merge_adapters``) is a
generative classifier: ``kd.predict``'s loader refuses it rather than loading the
causal LM as a sequence classifier with a random head."""
import pytest

from kd.errors import run_cli
from kd.predict import main as predict_main
from kd.merge_adapters import main as merge_cli
from models.quantized import load_classifier
from test_generative import batch, tiny_dir, tokenizer, trained  # noqa: F401  (module fixtures)


@pytest.fixture(scope="module")
def merged_dir(trained, tmp_path_factory):  # noqa: F811
    _, _, adapter_dir = trained
    out = tmp_path_factory.mktemp("merged")
    merge_cli([str(adapter_dir), str(out)])
    return out


def test_predict_refuses_a_merged_qlora_folder(merged_dir, capsys):
    status = run_cli(predict_main, ["--model", str(merged_dir), "--device", "cpu", "paypal.com.verify-account.tk/login"])
    assert status == 2
    err = capsys.readouterr().err
    assert "generative classifier from the QLoRA recipe" in err and "class_probabilities" in err


def test_loader_refuses_adapter_and_merged_folders(merged_dir, trained):  # noqa: F811
    _, _, adapter_dir = trained
    for folder in (merged_dir, adapter_dir):
        with pytest.raises(ValueError, match="generative classifier"):
            load_classifier(folder, device="cpu")
