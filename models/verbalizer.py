"""A causal LM read as a classifier: the verbalizer tokens and the forward passes
that give logits only where they are read.

Classification as generation. A URL becomes a prompt ending in ``Answer:``;
the student's logits ``z ∈ R^V`` at the prompt's last token are read at the
verbalizer tokens ``(w_0, w_1) = (" legitimate", " phishing")``, and

    q(c | url) = softmax([z_{w_0}, z_{w_1}])_c,    c = 0 legitimate, 1 phishing

is the student's class distribution. The full-vocabulary logits at the same
position (``answer_token_logits``) and along a whole sequence
(``sequence_logits``) serve token-level KL against a generative teacher with
the same tokenizer (``check_same_vocabulary``).

Batches are right-padded, on-policy samples left-padded; every forward passes
position ids counted over real tokens only, so a row gives the same logits
whatever its padding. RoPE models (Llama, Qwen2, Mistral) would not need them
(a left-padded row's positions shift uniformly, and attention sees relative
positions only); models with absolute position embeddings (GPT-2) do
(``tests/test_generative.py::test_position_ids_make_left_padding_invisible_to_absolute_position_models``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import SimpleNamespace

import torch

from models.encoder import LABEL_NAMES

DEFAULT_WORDS = (" legitimate", " phishing")
"""Class 0, class 1. Each is one token in SmolLM2's tokenizer (14005, 28420)."""

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




def template_token_ids(tokenizer, template: str, words: Sequence[str]) -> list[int]:
    """``verbalizer_token_ids`` of ``words`` in the context of ``template``'s end (the text after ``{url}``)."""
    return verbalizer_token_ids(tokenizer, words, context=template.split("{url}")[-1])


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B, S)`` positions counted over real tokens only (pads get 0).

    HF's forward numbers every column when given no position ids, so a
    left-padded row would see shifted rotary positions; ``generate`` counts real
    tokens, and so does every forward here, which makes padding side irrelevant.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def body_and_head(model):
    """``(decoder, lm_head)`` of a causal LM, peft-wrapped or not: the
    transformer body that gives the last hidden states ``(B, S, H)`` and the
    linear head that maps ``(..., H)`` to ``(..., V)`` logits (LoRA layers sit
    inside both, so adapters apply).

    Calling them apart lets a caller put only the positions it reads through
    the head, without ``logits_to_keep``, whose meaning changed across
    transformers releases (benchmarks/notes.md). Models whose logits are not ``head(h)`` (soft-capped or
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
    body, _ = body_and_head(model)
    out = body(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    return out.last_hidden_state


def lm_head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """``(..., V)`` float32 logits of hidden states ``(..., H)``."""
    _, head = body_and_head(model)
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



def answer_batch(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """A right-padded ``(B, S)`` batch of prompts with ``answer_index`` ``(B,)``,
    each row's last real token, where the logits predict the answer word."""
    return {"input_ids": input_ids, "attention_mask": attention_mask, "answer_index": attention_mask.sum(-1) - 1}



class VerbalizerClassifier(torch.nn.Module):
    """A causal LM seen as a C-way sequence classifier: ``forward(input_ids,
    attention_mask).logits`` ``(B, C)`` are the verbalizer logits at the answer
    position, so the encoder recipes' scoring (``kd.eval.inference.predict_tokenized``),
    validation and final evaluation apply unchanged.

    Its ``state_dict`` is the trainable (LoRA) parameters only: the loop's
    resumable trainer state then holds the adapters, not the frozen base.
    """

    def __init__(self, lm: torch.nn.Module, token_ids: list[int]):
        super().__init__()
        self.lm = lm
        self.token_ids = list(token_ids)
        # The verbalizer's words are given in LABEL_NAMES order (0 legitimate, 1 phishing).
        self.config = SimpleNamespace(num_labels=len(self.token_ids), id2label=dict(enumerate(LABEL_NAMES)))

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

