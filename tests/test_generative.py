"""The generative (QLoRA) student on a tiny randomly initialised Llama with
SmolLM2's real tokenizer (read from the packaged GGUF file), all on CPU.
bitsandbytes runs NF4 on CPU with a float32 compute dtype."""
import copy
import types
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

from kd.data.batching import collate
from kd.data.splits import Examples
from kd.data.prompts import PromptFormat, read_prompt_format, tokenize_prompts
from kd.eval.inference import class_probabilities
from kd.eval.measure import parameter_count
from kd.train.on_policy import sample_continuations
from models.causal_lm import load_causal_lm, load_causal_tokenizer
from models.gguf import materialize_gguf, resolve_causal_lm
from models.lora import load_adapters, load_qlora_student, save_adapters
from models.verbalizer import (
    DEFAULT_WORDS,
    answer_batch,
    answer_token_logits,
    check_same_vocabulary,
    position_ids_from_mask,
    sequence_logits,
    verbalizer_token_ids,
)

URLS = [
    ("google.com", 0),
    ("en.wikipedia.org/wiki/Phishing", 0),
    ("github.com/pytorch/pytorch", 0),
    ("docs.python.org/3/library/json.html", 0),
    ("amazon.com/gp/cart", 0),
    ("bbc.co.uk/news", 0),
    ("stackoverflow.com/questions/231767", 0),
    ("microsoft.com/en-us/windows", 0),
    ("paypal.com.account-verify.xyz/login.php?id=8812", 1),
    ("secure-bankofamerica.update-info.ru/signin", 1),
    ("192.168.14.2/apple/id/confirm.html", 1),
    ("appleid.apple.com-locked.support/unlock", 1),
    ("login-microsoftonline.tk/owa/auth.php", 1),
    ("free-gift-card.win/claim?u=39&ref=ab12", 1),
    ("netflix-billing-update.info/payment", 1),
    ("dropbox.secure-file-share.ga/doc/invoice.pdf.exe", 1),
]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from models.gguf import SMOLLM_ALIAS
    from models.paths import packaged_gguf

    try:
        gguf = packaged_gguf(SMOLLM_ALIAS)
    except FileNotFoundError as err:
        pytest.skip(str(err))
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok.padding_side = "right"
    if tok.pad_token is None:  # as load_causal_tokenizer does: transformers 5.17 reads no pad token from the GGUF
        tok.pad_token = tok.eos_token
    return tok


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    """A 2-layer Llama (hidden 64) with random weights and SmolLM2's tokenizer, saved as an HF folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def batch(tokenizer):
    """The URLs' prompts, right-padded, with labels and answer positions."""
    data = tokenize_prompts(Examples([u for u, _ in URLS], [y for _, y in URLS]), tokenizer, PromptFormat())
    collated = collate(data, range(len(URLS)))
    return {**answer_batch(collated["input_ids"], collated["attention_mask"]), "labels": collated["labels"]}


def verbalizer_logits(model, batch, ids):
    """``(B, C)`` logits of the verbalizer tokens at the answer position."""
    return answer_token_logits(model, batch)[:, ids]


@pytest.fixture(scope="module")
def trained(tiny_dir, batch, tmp_path_factory):
    """An NF4 + LoRA student after a few Adam steps of cross-entropy on the verbalizer,
    its losses, and its saved adapters."""
    torch.manual_seed(0)
    model, tokenizer = load_qlora_student(str(tiny_dir), lora_r=8, lora_alpha=16, lora_dropout=0.0, device="cpu")
    ids = PromptFormat().token_ids(tokenizer)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(verbalizer_logits(model, batch, ids), batch["labels"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    adapter_dir = save_adapters(model, tokenizer, tmp_path_factory.mktemp("adapters"), asdict(PromptFormat()))
    return model, losses, adapter_dir


def test_default_verbalizer_is_one_token_each_in_smollm2(tokenizer):
    ids = verbalizer_token_ids(tokenizer)
    assert ids == [14005, 28420]
    assert PromptFormat().token_ids(tokenizer) == ids  # in the template's context too
    assert tokenizer.decode(ids[1]) == " phishing"


def test_verbalizer_rejects_split_or_shared_words(tokenizer):
    with pytest.raises(ValueError, match="' phish' is not one token"):
        verbalizer_token_ids(tokenizer, (" legitimate", " phish"))
    with pytest.raises(ValueError, match="share a token id"):
        verbalizer_token_ids(tokenizer, (" safe", " safe"))


def test_prompt_normalises_and_cuts_the_url_but_keeps_the_end():
    prompt = PromptFormat(max_url_chars=12).build_prompt("HTTPS://WWW.Example.COM/a/very/long/path/")
    assert prompt == "Is this URL phishing or legitimate?\nURL: example.com/\nAnswer:"


def test_right_padded_batch_matches_single_example_forwards(tiny_dir, tokenizer, batch):
    model, _ = load_causal_lm(str(tiny_dir), quantize="none", device="cpu")
    ids = verbalizer_token_ids(tokenizer)
    lengths = batch["attention_mask"].sum(-1)
    assert lengths.unique().numel() > 1  # the batch really is padded
    assert torch.equal(batch["answer_index"], lengths - 1)
    with torch.no_grad():
        batched = verbalizer_logits(model, batch, ids)
        for b, (url, _) in enumerate(URLS):
            single = tokenizer(PromptFormat().build_prompt(url), return_tensors="pt")
            alone = model(**single).logits[0, -1, ids]
            torch.testing.assert_close(batched[b], alone, atol=1e-5, rtol=1e-5)


def test_answer_logits_do_not_rely_on_logits_to_keep(tiny_dir, batch, monkeypatch):
    """transformers before 5.21 (the GPU image has 5.17) does not select one
    position per row for a ``(B, 1)`` ``logits_to_keep`` tensor: here its
    forward ignores the argument and returns every position, as those did."""
    from transformers import LlamaForCausalLM

    model, _ = load_causal_lm(str(tiny_dir), quantize="none", device="cpu")
    mask = batch["attention_mask"]
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    expected = full[torch.arange(len(URLS)), batch["answer_index"]]  # (B, V)

    forward = LlamaForCausalLM.forward

    def forward_before_5_21(self, *args, logits_to_keep=0, **kwargs):
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "forward", forward_before_5_21)
    with torch.no_grad():
        torch.testing.assert_close(answer_token_logits(model, batch), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sequence_logits(model, batch["input_ids"], mask, slice(2, 5)), full[:, 2:5],
                                   atol=1e-5, rtol=1e-5)


def test_sequence_logits_do_not_depend_on_the_padding_side(tiny_dir, batch):
    model, _ = load_causal_lm(str(tiny_dir), quantize="none", device="cpu")
    mask = batch["attention_mask"]
    order = torch.argsort(mask, dim=-1, stable=True)  # pads first: left padding
    with torch.no_grad():
        right = sequence_logits(model, batch["input_ids"], mask)
        left = sequence_logits(model, batch["input_ids"].gather(1, order), mask.gather(1, order))
    left_back = torch.empty_like(left).scatter_(1, order[..., None].expand_as(left), left)
    real = mask.bool()
    torch.testing.assert_close(left_back[real], right[real], atol=1e-4, rtol=1e-4)


def test_position_ids_make_left_padding_invisible_to_absolute_position_models():
    """Pins the position ids of every forward: on-policy samples are left-padded, and a model
    with learned absolute positions (GPT-2) shifts each row by its padding without them.
    (For RoPE models, Llama, Qwen2, Mistral, a uniform shift changes nothing: attention sees
    relative positions only, so no test on them can show the ids.)"""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                       bos_token_id=0, eos_token_id=0, pad_token_id=0)).eval()
    rows = [torch.randint(1, 50, (n,)) for n in (7, 4)]
    width = max(len(r) for r in rows)
    left_ids = torch.stack([torch.cat([torch.zeros(width - len(r), dtype=torch.long), r]) for r in rows])
    left_mask = (left_ids != 0).long()
    with torch.no_grad():
        padded = sequence_logits(model, left_ids, left_mask)
        unnumbered = model(input_ids=left_ids, attention_mask=left_mask).logits.float()
        for b, row in enumerate(rows):
            alone = sequence_logits(model, row[None], torch.ones(1, len(row), dtype=torch.long))[0]
            torch.testing.assert_close(padded[b, width - len(row):], alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(unnumbered[1, width - len(rows[1]):], padded[1, width - len(rows[1]):], atol=1e-3)


def test_only_lora_trains_and_cross_entropy_falls(trained, tiny_dir):
    model, losses, _ = trained
    assert model.get_base_model().is_loaded_in_4bit
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    base, _ = load_causal_lm(str(tiny_dir), quantize="none", device="cpu")
    lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (parameter_count(model, trainable_only=True), parameter_count(model)) == (lora, sum(p.numel() for p in base.parameters()) + lora)
    assert losses[-1] < 0.5 * losses[0], losses


def test_evaluation_between_steps_leaves_gradients_unchanged(tiny_dir, batch):
    # bitsandbytes would otherwise repack the 4-bit weights, on the first eval
    # forward on an AVX512-BF16 CPU, into a layout with no backward.
    torch.manual_seed(0)
    model, tokenizer = load_qlora_student(str(tiny_dir), lora_dropout=0.0, device="cpu")
    for name, param in model.named_parameters():
        if "lora_B" in name:  # LoRA starts with B = 0; make it nonzero so every gradient matters
            torch.nn.init.normal_(param, std=0.1)
    ids = PromptFormat().token_ids(tokenizer)

    def gradients():
        model.train()
        model.zero_grad()
        F.cross_entropy(verbalizer_logits(model, batch, ids), batch["labels"]).backward()
        return [p.grad.clone() for p in model.parameters() if p.requires_grad]

    before = gradients()
    model.eval()
    with torch.no_grad():
        verbalizer_logits(model, batch, ids)
    for a, b in zip(before, gradients()):
        torch.testing.assert_close(a, b)


def test_adapters_save_and_reload(trained, batch):
    model, _, adapter_dir = trained
    assert not list(adapter_dir.glob("model*.safetensors"))  # adapters only, no base weights
    assert read_prompt_format(adapter_dir) == PromptFormat()
    with torch.no_grad():
        trained_nf4 = answer_token_logits(model, batch)
        reloaded, _ = load_adapters(adapter_dir, device="cpu")
        torch.testing.assert_close(answer_token_logits(reloaded, batch), trained_nf4)
        resumed, _ = load_adapters(adapter_dir, device="cpu", trainable=True)
        assert resumed.training
        torch.testing.assert_close(answer_token_logits(resumed.eval(), batch), trained_nf4)
    names = [n for n, p in resumed.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)


def test_merged_model_equals_full_precision_base_plus_adapters(trained, batch, tmp_path):
    from transformers import AutoModelForCausalLM

    from kd.merge_adapters import main as merge_cli

    model, _, adapter_dir = trained
    merge_cli([str(adapter_dir), str(tmp_path / "merged")])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    full_precision, tokenizer = load_adapters(adapter_dir, device="cpu", quantize="none")
    prompt = read_prompt_format(adapter_dir)
    with torch.no_grad():
        merged_logits = answer_token_logits(merged, batch)
        torch.testing.assert_close(merged_logits, answer_token_logits(full_precision, batch), atol=1e-5, rtol=1e-5)
        # The trained NF4 base + adapters differs by the quantization error only.
        ids = prompt.token_ids(tokenizer)
        merged_probs = merged_logits[:, ids].softmax(-1)
        nf4_probs = answer_token_logits(model, batch)[:, ids].softmax(-1)
    torch.testing.assert_close(merged_probs, nf4_probs, atol=1e-2, rtol=0)
    assert torch.equal(merged_probs.argmax(-1), nf4_probs.argmax(-1))
    # The evaluation's scores: the merged folder carries its prompt format.
    urls = [u for u, _ in URLS]
    probs = class_probabilities(merged, tokenizer, urls, read_prompt_format(tmp_path / "merged"))
    torch.testing.assert_close(probs, merged_probs)
    assert (probs.argmax(-1) == batch["labels"]).float().mean() > 0.8  # it learned the toy set


def test_sample_continuations_masks_and_greedy_tokens(tiny_dir, tokenizer, batch):
    model, _ = load_causal_lm(str(tiny_dir), quantize="none", device="cpu")
    S, steps = batch["input_ids"].shape[1], 5
    # Greedy tokens are the argmax of the logits that a full forward gives at those positions.
    greedy = sample_continuations(model, tokenizer, batch, max_new_tokens=steps, temperature=0.0)
    assert greedy["input_ids"].shape == (len(URLS), S + steps)
    where = greedy["loss_mask"][:, :-1]
    assert where.sum() == len(URLS) * steps
    with torch.no_grad():
        logits = sequence_logits(model, greedy["input_ids"], greedy["attention_mask"])[:, :-1]
    chosen = logits.gather(-1, greedy["input_ids"][:, 1:, None])[..., 0]
    assert torch.all(chosen[where] >= logits.amax(-1)[where] - 1e-4)

    # Pretend the third sampled token of row 0 is EOS: each row's continuation
    # counts up to and including its first occurrence, with pads after it.
    torch.manual_seed(1)
    model.train()
    first = sample_continuations(model, tokenizer, batch, max_new_tokens=steps, temperature=1.0)
    assert model.training  # the mode it found is restored
    eos = int(first["input_ids"][0, S + 2])
    fake = types.SimpleNamespace(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(1)
    out = sample_continuations(model, fake, batch, max_new_tokens=steps, temperature=1.0)
    new_ids, new_mask = out["input_ids"][:, S:], out["attention_mask"][:, S:]
    for row, mask in zip(new_ids.tolist(), new_mask.tolist()):
        stop = row.index(eos) + 1 if eos in row else len(row)
        assert mask == [1] * stop + [0] * (len(row) - stop)
        assert all(t == tokenizer.pad_token_id for t in row[stop:])
    assert 1 <= new_mask[0].sum() <= 3
    # loss_mask[t] marks the logits that predict a counted sampled token t + 1.
    assert torch.equal(out["loss_mask"][:, S - 1 : -1], new_mask.bool())
    assert out["loss_mask"].sum() == new_mask.sum()


def test_vocabulary_mismatch_is_an_error(tokenizer):
    check_same_vocabulary(tokenizer, copy.deepcopy(tokenizer))
    other = copy.deepcopy(tokenizer)
    other.add_tokens(["<url_sep>"])
    with pytest.raises(ValueError, match="share a tokenizer"):
        check_same_vocabulary(tokenizer, other)


def test_resolve_passes_hub_names_and_folders_through(tiny_dir):
    assert resolve_causal_lm("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_causal_lm(str(tiny_dir)) == str(tiny_dir)


def test_materialize_packaged_gguf(tmp_path):
    """≈25 s: dequantizes the 98 MB Q4_1 file into a 513 MiB float32 folder."""
    import gguf
    from safetensors import safe_open

    from models.gguf import HASH_MEMO, SMOLLM_ALIAS
    from models.paths import packaged_gguf

    try:
        path = packaged_gguf(SMOLLM_ALIAS)
    except FileNotFoundError as err:
        pytest.skip(str(err))
    folder = materialize_gguf(path, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [HASH_MEMO, folder.name]  # no temporary folder left
    assert materialize_gguf(path, tmp_path) == folder  # reused
    assert "quantization_config" not in (folder / "config.json").read_text()
    assert verbalizer_token_ids(load_causal_tokenizer(folder), DEFAULT_WORDS) == [14005, 28420]
    # One weight against gguf's own dequantization (the MLP down projection is stored unpermuted).
    tensor = next(t for t in gguf.GGUFReader(path).tensors if t.name == "blk.0.ffn_down.weight")
    expected = torch.from_numpy(gguf.quants.dequantize(tensor.data, tensor.tensor_type))
    with safe_open(folder / "model.safetensors", "pt") as f:
        torch.testing.assert_close(f.get_tensor("model.layers.0.mlp.down_proj.weight"), expected, atol=0, rtol=0)

