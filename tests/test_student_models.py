"""models/student.py: layer-copy students, narrow students, vocabulary pruning.

Tiny random BERT / DistilBERT models (CPU, seconds); one test prunes the real
MiniLM vocabulary.
"""
import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
)

from kd.eval.measure import pruning_report
from models.student import narrow_student, select_layers, student_from_config, student_from_teacher
from models.vocabulary import prune_vocabulary, token_ids_in
from conftest import make_url_rows


def tiny_bert(num_layers=4, vocab_size=100):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, num_labels=2,
    )
    return BertForSequenceClassification(config).eval()


def tiny_distilbert(num_layers=4):
    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=100, dim=32, n_layers=num_layers, n_heads=4, hidden_dim=64, max_position_embeddings=64)
    return DistilBertForSequenceClassification(config).eval()


def assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def logits(model, tokenizer, texts):
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


# --------------------------------------------------------------------------- layer selection


@pytest.mark.parametrize(
    "teacher, student, expected",
    [
        (12, 6, [0, 2, 4, 7, 9, 11]),  # DistilBERT's extraction from BERT-base
        (6, 3, [0, 3, 5]),
        (6, 2, [0, 5]),
        (6, 1, [0]),
        (6, 6, [0, 1, 2, 3, 4, 5]),
        (2, 1, [0]),
    ],
)
def test_evenly_spaced_keeps_both_ends(teacher, student, expected):
    assert select_layers(teacher, student, "evenly_spaced") == expected


def test_first_and_explicit_layer_maps():
    assert select_layers(6, 3, "first") == [0, 1, 2]
    assert select_layers(6, 3, [5, 1, 1]) == [5, 1, 1]


@pytest.mark.parametrize(
    "num_layers, selection",
    [(0, "evenly_spaced"), (7, "evenly_spaced"), (7, "first"), (3, [0, 1]), (2, [0, 6]), (2, [-1, 0]), (2, "last")],
)
def test_invalid_layer_selection_raises(num_layers, selection):
    with pytest.raises(ValueError):
        select_layers(6, num_layers, selection)


def test_the_old_name_every_other_is_refused_with_its_new_name():
    with pytest.raises(ValueError, match="renamed 'evenly_spaced'"):
        select_layers(6, 3, "every_other")


# --------------------------------------------------------------------------- students from teacher layers


@pytest.mark.parametrize(
    "build, layers_key", [(tiny_bert, "bert.encoder.layer"), (tiny_distilbert, "distilbert.transformer.layer")]
)
def test_student_layers_are_copies_of_the_selected_teacher_layers(build, layers_key):
    teacher = build(num_layers=4)
    student = student_from_teacher(teacher, 2, "evenly_spaced")
    assert type(student) is type(teacher)
    assert student.config.num_hidden_layers == 2
    assert student.config.distilled_from_layers == [0, 3]

    t_state, s_state = teacher.state_dict(), student.state_dict()
    for i, j in enumerate([0, 3]):
        prefix = f"{layers_key}.{i}."
        keys = [k for k in s_state if k.startswith(prefix)]
        assert keys
        for key in keys:
            assert torch.equal(s_state[key], t_state[f"{layers_key}.{j}." + key[len(prefix):]]), key
    # Everything outside the encoder stack (embeddings, pooler, head) is the teacher's.
    outside = [k for k in s_state if not k.startswith(layers_key)]
    assert any("embeddings" in k for k in outside) and any("classifier" in k for k in outside)
    assert_same_tensors({k: s_state[k] for k in outside}, {k: t_state[k] for k in outside})


@pytest.mark.parametrize("build", [tiny_bert, tiny_distilbert])
def test_full_depth_student_reproduces_the_teacher(build):
    teacher = build(num_layers=3)
    student = student_from_teacher(teacher, 3).eval()
    ids = torch.randint(5, 100, (2, 9))
    with torch.no_grad():
        assert torch.equal(student(input_ids=ids).logits, teacher(input_ids=ids).logits)


def test_student_from_the_tiny_teacher_folder_saves_its_layer_map(tiny_bert_dir, tmp_path):
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    student = student_from_teacher(teacher, 1, "evenly_spaced")
    assert student.config.distilled_from_layers == [0]
    assert torch.equal(student.bert.encoder.layer[0].output.dense.weight, teacher.bert.encoder.layer[0].output.dense.weight)
    assert torch.equal(student.bert.pooler.dense.weight, teacher.bert.pooler.dense.weight)
    student.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).distilled_from_layers == [0]
    with pytest.raises(ValueError, match="1..2 layers"):
        student_from_teacher(teacher, 3)


def test_student_from_an_unsupported_architecture_raises():
    config = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=32, bos_token_id=0, eos_token_id=0)
    teacher = GPT2ForSequenceClassification(config)
    with pytest.raises(ValueError, match="BERT-like"):
        student_from_teacher(teacher, 1)


# --------------------------------------------------------------------------- narrow and configured students


def test_narrow_student_shapes(minilm_dir):
    teacher_config = AutoConfig.from_pretrained(minilm_dir, num_labels=2)
    student = narrow_student(teacher_config, num_layers=3, hidden_size=192)
    assert isinstance(student, BertForSequenceClassification)
    assert len(student.bert.encoder.layer) == 3
    assert student.bert.embeddings.word_embeddings.weight.shape == (30522, 192)
    assert student.bert.encoder.layer[0].intermediate.dense.weight.shape == (768, 192)
    assert student.config.num_attention_heads == 12  # the teacher's
    assert student.classifier.weight.shape == (2, 192)
    with pytest.raises(ValueError, match="divisible"):
        narrow_student(teacher_config, 3, hidden_size=100)

    student = narrow_student(teacher_config, 2, hidden_size=64, num_attention_heads=4, intermediate_size=96)
    assert student.bert.encoder.layer[1].attention.self.query.weight.shape == (64, 64)
    assert student.bert.encoder.layer[1].intermediate.dense.weight.shape == (96, 64)


def test_narrow_distilbert_student():
    student = narrow_student(tiny_distilbert().config, num_layers=2, hidden_size=16, num_attention_heads=2)
    assert isinstance(student, DistilBertForSequenceClassification)
    assert len(student.distilbert.transformer.layer) == 2
    assert student.distilbert.transformer.layer[0].ffn.lin1.weight.shape == (64, 16)


def test_student_from_config(tiny_bert_dir):
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    pretrained = student_from_config(str(tiny_bert_dir))
    assert_same_tensors(pretrained.state_dict(), teacher.state_dict())
    fresh = student_from_config(str(tiny_bert_dir), pretrained=False)
    weight = "bert.encoder.layer.0.attention.self.query.weight"
    assert fresh.state_dict()[weight].shape == teacher.state_dict()[weight].shape
    assert not torch.equal(fresh.state_dict()[weight], teacher.state_dict()[weight])
    with pytest.raises(ValueError, match="num_labels"):
        student_from_config(str(tiny_bert_dir), num_labels=3)


# --------------------------------------------------------------------------- vocabulary pruning


@pytest.fixture(scope="module")
def pruned_tiny(tiny_bert_dir, tmp_path_factory):
    """The tiny classifier pruned to the tokens of 200 synthetic URLs, saved."""
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    urls = [url for url, _ in make_url_rows(200)]
    keep = token_ids_in(urls, tokenizer, max_length=64)
    out_dir = tmp_path_factory.mktemp("pruned")
    pruned_model, pruned_tokenizer = prune_vocabulary(model, tokenizer, keep, out_dir=out_dir)
    return model, tokenizer, pruned_model.eval(), pruned_tokenizer, keep, urls, out_dir


def test_kept_ids_are_the_used_tokens_plus_special_tokens(pruned_tiny):
    _, tokenizer, _, _, keep, urls, _ = pruned_tiny
    used = {i for row in tokenizer(urls)["input_ids"] for i in row}
    assert keep == sorted(used | set(tokenizer.all_special_ids))
    assert {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"} <= set(tokenizer.convert_ids_to_tokens(keep))


def test_pruned_embeddings_and_vocabulary_are_the_kept_rows_in_order(pruned_tiny):
    model, tokenizer, pruned_model, pruned_tokenizer, keep, _, _ = pruned_tiny
    old_embeddings = model.get_input_embeddings().weight
    assert torch.equal(pruned_model.get_input_embeddings().weight, old_embeddings[keep])
    assert pruned_model.config.vocab_size == len(keep)
    assert pruned_tokenizer.get_vocab() == {t: rank for rank, t in enumerate(tokenizer.convert_ids_to_tokens(keep))}
    assert pruned_tokenizer.pad_token_id == pruned_model.config.pad_token_id == keep.index(tokenizer.pad_token_id)


def test_pruned_model_matches_on_in_vocabulary_urls(pruned_tiny):
    model, tokenizer, pruned_model, pruned_tokenizer, _, urls, _ = pruned_tiny
    for url in urls:  # the same WordPiece segmentation (greedy longest match) on every training URL
        assert pruned_tokenizer.tokenize(url) == tokenizer.tokenize(url)
    torch.testing.assert_close(logits(pruned_model, pruned_tokenizer, urls), logits(model, tokenizer, urls), rtol=0, atol=1e-5)


def test_out_of_vocabulary_words(pruned_tiny):
    _, tokenizer, _, pruned_tokenizer, keep, _, _ = pruned_tiny
    # 'j' and 'q' never occur in the synthetic URLs: no kept piece starts "jq", so the whole word is [UNK].
    assert pruned_tokenizer.tokenize("login.jqj/bank") == ["log", "##in", ".", "[UNK]", "/", "bank"]
    ids = pruned_tokenizer("amazon.de/ünïcödé?q=€")["input_ids"]
    assert max(ids) < len(keep)
    # Accent stripping and lower-casing carry over from the old normaliser.
    assert pruned_tokenizer.tokenize("LOGIN.Bänk") == tokenizer.tokenize("login.bank")


def test_removed_word_pieces_are_resegmented_or_unknown(tiny_bert_dir):
    """The documented caveat: a word whose own token was pruned is segmented
    again over the kept pieces, and becomes [UNK] only when that fails."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    keep = token_ids_in(["bank xyzs", "sign login"], tokenizer)
    assert tokenizer.tokenize("banks") == ["banks"]
    _, pruned = prune_vocabulary(model, tokenizer, keep)
    assert pruned.tokenize("banks") == ["bank", "##s"]
    assert tokenizer.tokenize("signing") == ["signing"]
    assert pruned.tokenize("signing") == ["[UNK]"]  # sign ##in, then no kept "##g..."


def test_saved_pruned_folder_reloads_with_auto_classes(pruned_tiny):
    model, tokenizer, pruned_model, pruned_tokenizer, keep, urls, out_dir = pruned_tiny
    reloaded_model = AutoModelForSequenceClassification.from_pretrained(out_dir).eval()
    reloaded_tokenizer = AutoTokenizer.from_pretrained(out_dir)
    assert reloaded_tokenizer.get_vocab() == pruned_tokenizer.get_vocab()
    assert reloaded_model.config.vocab_size == len(keep)
    texts = urls[:50] + ["login.jqj/bank", "LOGIN.Bänk/ünïcödé"]
    assert reloaded_tokenizer(texts)["input_ids"] == pruned_tokenizer(texts)["input_ids"]
    reloaded = logits(reloaded_model, reloaded_tokenizer, texts)
    torch.testing.assert_close(reloaded, logits(pruned_model, pruned_tokenizer, texts), rtol=0, atol=0)
    torch.testing.assert_close(reloaded[:50], logits(model, tokenizer, urls[:50]), rtol=0, atol=1e-5)


def test_pruning_report(pruned_tiny):
    model, _, pruned_model, _, keep, _, _ = pruned_tiny
    report = pruning_report(model, pruned_model)
    removed = (30522 - len(keep)) * model.config.hidden_size
    assert report["embedding_rows_before"] == 30522 and report["embedding_rows_after"] == len(keep)
    assert report["parameters_before"] - report["parameters_after"] == removed
    assert report["fp32_bytes_saved"] == 4 * removed


def test_pruning_slices_a_tied_masked_lm_head(tiny_bert_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)).eval()
    with torch.no_grad():
        model.cls.predictions.bias.normal_()  # a non-zero bias, so slicing it is tested
    texts = ["paypal.com/login", "bank.xyz/verify"]
    keep = token_ids_in(texts, tokenizer)
    pruned_model, pruned_tokenizer = prune_vocabulary(model, tokenizer, keep)
    assert pruned_model.get_output_embeddings().weight is pruned_model.get_input_embeddings().weight
    with torch.no_grad():
        before = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits[..., keep]
        after = pruned_model.eval()(**pruned_tokenizer(texts, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_pruning_the_minilm_vocabulary_to_urls(minilm_dir):
    """The real 30,522-token vocabulary and 6-layer MiniLM, pruned to 300 URLs."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=2).eval()
    urls = [url for url, _ in make_url_rows(300)]
    keep = token_ids_in(urls, tokenizer, max_length=128)
    pruned_model, pruned_tokenizer = prune_vocabulary(model, tokenizer, keep)
    report = pruning_report(model, pruned_model)
    print(
        f"\nMiniLM pruned to {len(urls)} synthetic URLs: {len(keep)} of 30522 tokens kept; parameters "
        f"{report['parameters_before']:,} -> {report['parameters_after']:,}; "
        f"fp32 {report['fp32_bytes_before'] / 2**20:.1f} -> {report['fp32_bytes_after'] / 2**20:.1f} MiB"
    )
    assert len(keep) < 0.01 * 30522
    assert report["parameters_after"] < 0.5 * report["parameters_before"]
    torch.testing.assert_close(
        logits(pruned_model.eval(), pruned_tokenizer, urls[:32]), logits(model, tokenizer, urls[:32]), rtol=0, atol=1e-5
    )


def test_the_frozen_teacher_is_loaded_onto_the_given_device(tiny_bert_dir):
    """The recipe's live teacher must sit where the student trains (the meta device
    stands in for CUDA here: any device the weights were not loaded on)."""
    from models.encoder import load_frozen_classifier

    teacher = load_frozen_classifier(tiny_bert_dir, torch.device("meta"))
    assert {p.device.type for p in teacher.parameters()} == {"meta"}
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
