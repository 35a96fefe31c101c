"""Encoders other than BERT: MPNet (the seed-scale teacher), RoBERTa and DistilBERT.

Tiny random classifiers of each family (4 layers, 64 wide: bitsandbytes' CPU
4-bit kernel needs rows of at least one 64-value block) with a character
WordPiece tokenizer with unused tokens among the special ones, so that pruning
renumbers them (RoBERTa's padding id moves unless pruning keeps it: RoBERTa and
MPNet compute position ids from it). Each
family goes through what the pipeline does with a teacher: a student from its
layers, vocabulary pruning, hidden-state and attention-relation capture,
quantized save/load and kd.predict.
"""
from __future__ import annotations

import csv
import string

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertTokenizer,
    DistilBertConfig,
    DistilBertTokenizer,
    MPNetConfig,
    MPNetTokenizer,
    RobertaConfig,
)

from conftest import make_url_rows
from kd.eval.inference import predict_proba
from kd.predict import main as predict_main
from losses import attention_relation_kl, capture_qkv, find_qkv_projections
from models.encoder import build_classifier, load_frozen_classifier
from models.quantized import load_classifier, precision_of, save_quantized
from models.student import student_from_teacher
from models.vocabulary import prune_vocabulary, token_ids_in

FAMILIES = ("mpnet", "roberta", "distilbert")
LAYERS = {"mpnet": "mpnet.encoder.layer", "roberta": "roberta.encoder.layer", "distilbert": "distilbert.transformer.layer"}
URLS = [url for url, _ in make_url_rows(12, seed=3)] + ["a.b", "example.org/x?y=1"]
CHARS = string.ascii_lowercase + string.digits + string.punctuation
FILLERS = ["[unused0]", "[unused1]", "[unused2]"]  # never in a URL: pruning renumbers every special token


def tokenizer_for(family: str):
    pieces = [*CHARS, *("##" + c for c in CHARS)]
    if family == "mpnet":  # MPNet's specials where all-mpnet-base-v2 has them: its code fixes <pad> at id 1
        specials = ["<s>", "<pad>", "</s>", "<unk>", *FILLERS, "[UNK]", "<mask>"]
        vocab = {t: i for i, t in enumerate(specials + pieces)}
        return MPNetTokenizer(vocab=vocab, unk_token="[UNK]")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {t: i for i, t in enumerate(FILLERS + specials + pieces)}
    # RoBERTa's own tokenizer is byte-level BPE, which pruning does not support; the model takes WordPiece ids.
    return (DistilBertTokenizer if family == "distilbert" else BertTokenizer)(vocab=vocab)


def config_for(family: str, tokenizer, num_layers: int = 4):
    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, num_labels=2)
    if family == "distilbert":
        return DistilBertConfig(dim=64, n_layers=num_layers, n_heads=4, hidden_dim=128, max_position_embeddings=160,
                                initializer_range=0.1, **ids)
    ids.update(bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
    Config = MPNetConfig if family == "mpnet" else RobertaConfig
    return Config(hidden_size=64, num_hidden_layers=num_layers, num_attention_heads=4, intermediate_size=128,
                  max_position_embeddings=160, initializer_range=0.1, **ids)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def teacher(family):
    """(model, tokenizer) of the family, random weights, eval mode."""
    tokenizer = tokenizer_for(family)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config_for(family, tokenizer)).eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def teacher_dir(teacher, tmp_path_factory):
    model, tokenizer = teacher
    folder = tmp_path_factory.mktemp("teacher")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def logits(model, tokenizer, texts=URLS):
    batch = tokenizer(texts, padding=True, return_tensors="pt")  # lengths differ: padding matters
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_the_tokenizer_fits_the_family(teacher, family):
    model, tokenizer = teacher
    assert "[UNK]" not in tokenizer.tokenize(URLS[0])
    assert tokenizer.pad_token_id == (1 if family == "mpnet" else 3)


def test_the_project_loaders_take_the_family(teacher, teacher_dir, family):
    """SDPA where the family has it; MPNet has only eager attention."""
    model, tokenizer = teacher
    fresh = build_classifier(str(teacher_dir))
    frozen = load_frozen_classifier(teacher_dir)
    assert frozen.config._attn_implementation == ("eager" if family == "mpnet" else "sdpa")
    assert torch.equal(logits(frozen, tokenizer), logits(model, tokenizer))
    assert type(fresh) is type(model) and fresh.config.id2label == {0: "legitimate", 1: "phishing"}


# --------------------------------------------------------------------------- students from teacher layers


def test_student_layers_are_copies_of_the_selected_teacher_layers(teacher, family, tmp_path):
    model, tokenizer = teacher
    student = student_from_teacher(model, 2, "evenly_spaced")
    assert type(student) is type(model) and student.config.distilled_from_layers == [0, 3]
    key = LAYERS[family]
    t_state, s_state = model.state_dict(), student.state_dict()
    for i, j in enumerate([0, 3]):
        layer = [k for k in s_state if k.startswith(f"{key}.{i}.")]
        assert layer
        for k in layer:
            assert torch.equal(s_state[k], t_state[k.replace(f"{key}.{i}.", f"{key}.{j}.")]), k
    outside = [k for k in s_state if not k.startswith(key + ".")]
    assert all(torch.equal(s_state[k], t_state[k]) for k in outside)
    if family == "mpnet":  # the relative-position bias is the encoder's, shared by all layers
        assert "mpnet.encoder.relative_attention_bias.weight" in outside
    student.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_hidden_layers == 2
    torch.testing.assert_close(logits(reloaded, tokenizer), logits(student.eval(), tokenizer), rtol=0, atol=0)


def test_a_full_depth_student_reproduces_the_teacher(teacher):
    model, tokenizer = teacher
    student = student_from_teacher(model, 4).eval()
    assert torch.equal(logits(student, tokenizer), logits(model, tokenizer))


# --------------------------------------------------------------------------- vocabulary pruning


def test_pruning_keeps_the_outputs_on_in_vocabulary_urls(teacher, tmp_path):
    """RoBERTa and MPNet number positions from the padding id (MPNet's code
    fixes it at 1): pruning keeps the ids below it, so it does not move."""
    model, tokenizer = teacher
    keep = token_ids_in(URLS, tokenizer)
    pruned, pruned_tokenizer = prune_vocabulary(model, tokenizer, keep, out_dir=tmp_path)
    pad = tokenizer.pad_token_id
    assert pruned.config.vocab_size == len(set(keep) | set(range(pad))) < len(tokenizer)
    assert pruned_tokenizer.pad_token_id == pruned.config.pad_token_id == pad
    expected = logits(model, tokenizer)
    torch.testing.assert_close(logits(pruned.eval(), pruned_tokenizer), expected, rtol=0, atol=1e-6)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(reloaded, AutoTokenizer.from_pretrained(tmp_path)), expected, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- hidden states and attention relations


def test_hidden_states_and_qkv_are_captured_in_each_block(teacher, family):
    model, tokenizer = teacher
    student = student_from_teacher(model, 4).eval()
    batch = tokenizer(URLS, padding=True, return_tensors="pt")
    b, t = batch["input_ids"].shape
    with torch.no_grad(), capture_qkv(model, [0, -1]) as t_qkv, capture_qkv(student, [0, -1]) as s_qkv:
        t_out = model(**batch, output_hidden_states=True)
        s_out = student(**batch, output_hidden_states=True)
    assert len(t_out.hidden_states) == 5 and all(h.shape == (b, t, 64) for h in t_out.hidden_states)
    assert set(t_qkv) == {0, -1} and all(x.shape == (b, t, 64) for x in t_qkv[-1])
    query = find_qkv_projections(model, -1)[0]
    assert query is dict(model.named_modules())[f"{LAYERS[family]}.3.attention." +
                                                 {"mpnet": "attn.q", "roberta": "self.query", "distilbert": "q_lin"}[family]]
    relation = attention_relation_kl(s_qkv[-1], t_qkv[-1], num_heads=4, attention_mask=batch["attention_mask"])
    assert relation.shape == (b, t) and relation.abs().max() < 1e-5  # same weights: no divergence


# --------------------------------------------------------------------------- quantized save/load and kd.predict


@pytest.fixture(scope="module")
def nf4_dir(teacher_dir, tmp_path_factory):
    model, tokenizer = load_classifier(teacher_dir, "nf4", device="cpu")
    return save_quantized(model, tokenizer, tmp_path_factory.mktemp("nf4"), "nf4")


@pytest.mark.parametrize("precision", ["nf4", "int8", "dynamic-int8"])
def test_quantized_save_and_load(teacher_dir, family, precision, tmp_path):
    import bitsandbytes as bnb

    reference = predict_proba(*load_classifier(teacher_dir, device="cpu"), URLS)
    model, tokenizer = load_classifier(teacher_dir, precision, device="cpu")
    query = find_qkv_projections(model, 0)[0]
    assert type(query) is not torch.nn.Linear  # the encoder's Linear layers are quantized ...
    head = [m for n, m in model.named_modules() if n.startswith(("classifier", "pre_classifier")) and hasattr(m, "weight")]
    assert head and all(type(m) is torch.nn.Linear for m in head)  # ... not the head
    save_quantized(model, tokenizer, tmp_path, precision)
    reloaded, reloaded_tokenizer = load_classifier(tmp_path, device="cpu")
    assert precision_of(reloaded) == precision
    probs = predict_proba(reloaded, reloaded_tokenizer, URLS)
    np.testing.assert_array_equal(probs, predict_proba(model, tokenizer, URLS))
    np.testing.assert_allclose(probs, reference, atol={"nf4": 0.1, "int8": 0.03, "dynamic-int8": 0.03}[precision])
    if precision == "nf4":
        assert isinstance(find_qkv_projections(reloaded, 0)[0], bnb.nn.Linear4bit)


@pytest.mark.parametrize("which", ["teacher_dir", "nf4_dir"])
def test_predict_scores_the_saved_folder(which, family, request, tmp_path):
    folder = request.getfixturevalue(which)
    source = tmp_path / "urls.txt"
    source.write_text("\n".join(URLS) + "\n")
    output = tmp_path / "scores.csv"
    assert predict_main(["--model", str(folder), "--input", str(source), "--output", str(output),
                         "--device", "cpu", "--threshold", "0.5"]) in (0, None)
    with open(output, newline="", encoding="utf-8") as handle:
        got = [float(row["probability_phishing"]) for row in csv.DictReader(handle)]
    model, tokenizer = load_classifier(folder, device="cpu")
    np.testing.assert_allclose(got, predict_proba(model, tokenizer, URLS), rtol=0, atol=1e-5)
