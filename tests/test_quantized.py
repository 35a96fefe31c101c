"""models/quantized.py on a tiny random BERT classifier (CPU, a few seconds)."""
import json
import shutil

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertForSequenceClassification
from conftest import save_tiny_classifier

from kd.eval.inference import predict_proba
from kd.eval.measure import measure_latency, measure_throughput, memory_footprint_bytes, parameter_count, size_on_disk_bytes
from models.quantized import PRECISIONS, load_classifier, precision_of, save_quantized, saved_precision

URLS = [
    "paypal.com.verify-account.xyz/login",
    "https://www.google.com/",
    "http://192.168.0.1/admin.php?x=1&amp;y=2",
    "example.org",
    "secure-login.apple.com.id-check.ru/",
    "github.com/pytorch/pytorch/issues/1",
    "a" * 300,
]
# Max |p - p_fp32| allowed; the tiny model's probabilities spread over ~0.1.
TOLERANCE = {"fp32": 0.0, "bf16": 0.015, "nf4": 0.05, "fp4": 0.05, "int8": 0.015, "dynamic-int8": 0.015}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_classifier(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def reference(tiny_dir):
    model, tokenizer = load_classifier(tiny_dir)
    return predict_proba(model, tokenizer, URLS)


@pytest.fixture(scope="module")
def saved(tiny_dir, tmp_path_factory):
    """precision -> (quantized model, tokenizer, folder it was saved to before any forward)."""
    out = {}
    for precision in PRECISIONS:
        model, tokenizer = load_classifier(tiny_dir, precision)
        folder = tmp_path_factory.mktemp(precision)
        save_quantized(model, tokenizer, folder, precision)
        out[precision] = model, tokenizer, folder
    return out


def test_tiny_tokenizer_uses_its_vocab(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    assert len(tokenizer) == 5 + 2 * 68
    assert "[UNK]" not in tokenizer.tokenize("example.com/login?a=1")


def test_reference_probabilities_differ_between_urls(reference):
    assert reference.max() - reference.min() > 2 * max(TOLERANCE.values())


@pytest.mark.parametrize("precision", PRECISIONS)
def test_each_precision_is_close_to_fp32(tiny_dir, reference, precision):
    model, tokenizer = load_classifier(tiny_dir, precision)
    assert precision_of(model) == precision
    np.testing.assert_allclose(predict_proba(model, tokenizer, URLS), reference, atol=TOLERANCE[precision])
    # the head and the pooler stay plain float Linears
    assert type(model.classifier) is torch.nn.Linear
    assert type(model.bert.pooler.dense) is torch.nn.Linear
    quantized = precision not in ("fp32", "bf16")
    assert (type(model.bert.encoder.layer[0].attention.self.query) is not torch.nn.Linear) == quantized


@pytest.mark.parametrize("precision", PRECISIONS)
def test_save_reload_gives_identical_outputs_without_requantizing(saved, monkeypatch, precision):
    import bitsandbytes.functional

    model, tokenizer, folder = saved[precision]
    assert saved_precision(folder) == precision
    with monkeypatch.context() as patch:
        if precision != "dynamic-int8":  # dynamic int8 is stored as fp32 and quantized on load, by design
            for name in ("quantize_4bit", "int8_vectorwise_quant"):
                patch.setattr(bitsandbytes.functional, name, lambda *a, **k: pytest.fail("re-quantized"))
        reloaded, reloaded_tokenizer = load_classifier(folder)
    assert precision_of(reloaded) == precision
    np.testing.assert_array_equal(
        predict_proba(reloaded, reloaded_tokenizer, URLS), predict_proba(model, tokenizer, URLS)
    )
    if precision in ("nf4", "fp4"):
        weight = reloaded.bert.encoder.layer[0].intermediate.dense.weight
        assert weight.dtype == torch.uint8 and weight.numel() == 64 * 128 // 2
        assert weight.quant_state.quant_type == precision


def test_parameter_count_is_the_same_in_every_precision(saved, tiny_dir):
    fp32 = BertForSequenceClassification.from_pretrained(tiny_dir)
    expected = sum(p.numel() for p in fp32.parameters())
    assert {p: parameter_count(saved[p][0]) for p in PRECISIONS} == dict.fromkeys(PRECISIONS, expected)


def test_memory_footprint_and_size_on_disk(saved):
    footprint = {p: memory_footprint_bytes(saved[p][0]) for p in PRECISIONS}
    fp32 = saved["fp32"][0]
    assert footprint["fp32"] == fp32.get_memory_footprint()
    assert footprint["nf4"] < footprint["int8"] < footprint["fp32"]
    assert footprint["dynamic-int8"] < footprint["bf16"] < footprint["fp32"]
    nf4 = saved["nf4"][0]
    assert footprint["nf4"] > nf4.get_memory_footprint()  # + absmax and code tables

    disk = {p: size_on_disk_bytes(saved[p][2]) for p in PRECISIONS}
    assert disk["nf4"] < disk["int8"] < disk["bf16"] < disk["fp32"]
    assert disk["dynamic-int8"] > disk["fp32"]  # fp32 weights plus the marker


def test_latency_and_throughput_are_positive(saved):
    model, tokenizer, _ = saved["fp32"]
    assert measure_latency(model, tokenizer, URLS, warmup=1, repeats=3) > 0
    assert measure_throughput(model, tokenizer, URLS * 10, batch_size=16) > 0


def test_unknown_precision_lists_the_known(tiny_dir):
    known = "fp32, bf16, nf4, fp4, int8, dynamic-int8"
    with pytest.raises(ValueError, match=f"unknown precision 'int4'; known: {known}"):
        load_classifier(tiny_dir, "int4")


@pytest.mark.parametrize("asked", ["fp32", "fp4", "dynamic-int8"])
def test_a_quantized_folder_loads_only_as_itself(saved, asked):
    with pytest.raises(ValueError, match=f"holds a nf4 model; it loads only as nf4.*not as {asked}"):
        load_classifier(saved["nf4"][2], asked)


def test_device_errors(tiny_dir):
    with pytest.raises(ValueError, match="dynamic-int8 runs on CPU only"):
        load_classifier(tiny_dir, "dynamic-int8", device="cuda")
    with pytest.raises(ValueError, match=r"nf4 \(bitsandbytes\) cannot run on meta"):
        load_classifier(tiny_dir, "nf4", device="meta")


def test_other_quantization_methods_are_refused(tiny_dir, tmp_path):
    shutil.copytree(tiny_dir, tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="quantized with 'gptq'"):
        load_classifier(tmp_path)


def test_save_refuses_a_4bit_model_repacked_for_cpu(tiny_dir, tmp_path):
    model, tokenizer = load_classifier(tiny_dir, "fp4")
    predict_proba(model, tokenizer, URLS[:1])
    weight = model.bert.encoder.layer[0].output.dense.weight
    if getattr(weight.quant_state, "packing_format_for_cpu", False):  # CPUs with AVX512-BF16
        with pytest.raises(ValueError, match="already run on CPU"):
            save_quantized(model, tokenizer, tmp_path)
    else:
        save_quantized(model, tokenizer, tmp_path)


def test_save_checks_the_precision(saved, tmp_path):
    model, tokenizer, _ = saved["int8"]
    with pytest.raises(ValueError, match="asked to save as nf4, but the model is int8"):
        save_quantized(model, tokenizer, tmp_path, "nf4")
