"""How a URL becomes the generative student's prompt, tokenised once."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kd.data.batching import TokenizedSet, tokenize
from kd.data.splits import Examples
from kd.data.urls import normalize_url
from models.lora import META_FILE
from models.verbalizer import DEFAULT_WORDS, template_token_ids

DEFAULT_TEMPLATE = "Is this URL phishing or legitimate?\nURL: {url}\nAnswer:"


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
        return template_token_ids(tokenizer, self.template, self.words)


def read_prompt_format(folder: str | Path) -> PromptFormat:
    """The prompt format saved with adapters or a merged model."""
    return prompt_format_of(json.loads((Path(folder) / META_FILE).read_text()))


def prompt_format_of(meta: dict) -> PromptFormat:
    """The :class:`PromptFormat` recorded in a ``generative.json`` dictionary."""
    prompt = meta["prompt"]
    return PromptFormat(prompt["template"], tuple(prompt["words"]), prompt["max_url_chars"])


def tokenize_prompts(examples: Examples, tokenizer, prompt: PromptFormat) -> TokenizedSet:
    """Each URL's prompt, tokenised once (``kd.data.batching.tokenize``) and never
    truncated: ``max_length`` bounds the prompt's UTF-8 bytes (a byte-level BPE
    token covers at least one byte) plus special tokens."""
    prompts = Examples([prompt.build_prompt(url) for url in examples.urls], examples.labels)
    return tokenize(prompts, tokenizer, 4 * (len(prompt.template) + prompt.max_url_chars) + 8)

