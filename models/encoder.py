"""The encoder classifier: its tokenizer, a fresh classifier on any Hugging Face
encoder, and a trained one loaded frozen (a teacher)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from models.paths import NO_REMOTE_CODE, ModelFolderError, check_tokenizer, check_weights, resolve_model_path

LABEL_NAMES = ("legitimate", "phishing")
"""The classes every classifier here predicts: 0 legitimate, 1 phishing."""

LEGITIMATE_NAMES = frozenset({"legitimate", "legit", "benign", "good", "safe", "0", "label_0"})
PHISHING_NAMES = frozenset({"phishing", "phish", "malicious", "bad", "1", "label_1"})
"""Class names (lower case) that :func:`phishing_index` maps; ``LABEL_0`` / ``LABEL_1``
are transformers' defaults, which this project has always read as 0 legitimate, 1 phishing."""


def phishing_index(config, where: str | Path = "the model") -> int:
    """The logit column of the phishing class, read from ``config.id2label``.

    The model must have two labels, one named as in :data:`LEGITIMATE_NAMES` and
    the other as in :data:`PHISHING_NAMES` (case-insensitive); anything else is a
    :class:`ModelFolderError` naming ``id2label``: scoring with a guessed order
    would invert every verdict without a sign.
    """
    id2label = {int(i): str(name) for i, name in (getattr(config, "id2label", None) or {}).items()}
    if config.num_labels != 2 or sorted(id2label) != [0, 1]:
        raise ModelFolderError(
            f"{where} has {config.num_labels} labels (id2label {id2label}); this project scores URLs with "
            "two-class models (legitimate, phishing): use a classifier trained here or fine-tune one with train_teacher.py"
        )
    kinds = ["phishing" if name.lower() in PHISHING_NAMES else "legitimate" if name.lower() in LEGITIMATE_NAMES else None
             for name in (id2label[0], id2label[1])]
    if sorted(map(str, kinds)) != ["legitimate", "phishing"]:
        raise ModelFolderError(
            f"the labels of {where} (id2label {id2label}) do not say which class is phishing; name them one of "
            f"{sorted(LEGITIMATE_NAMES)} and one of {sorted(PHISHING_NAMES)} in its config.json"
        )
    return kinds.index("phishing")


def load_tokenizer(name_or_path: str):
    """The encoder's tokenizer, checked against the model's config (:func:`check_tokenizer`).

    ``AutoTokenizer`` on the folder: in transformers 5 ``BertTokenizer(vocab_file=...)``
    silently ignores the vocabulary.
    """
    from transformers import AutoConfig, AutoTokenizer

    path = resolve_model_path(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path, **NO_REMOTE_CODE)
    check_tokenizer(tokenizer, AutoConfig.from_pretrained(path, **NO_REMOTE_CODE), name_or_path)
    return tokenizer


def build_classifier(name_or_path: str, *, pretrained: bool = True, dropout: float | None = None,
                     label_names: Sequence[str] = LABEL_NAMES, shape: Mapping | None = None) -> torch.nn.Module:
    """A sequence classifier with a fresh ``len(label_names)``-way head on any HF
    encoder (SDPA attention where the family has it, transformers' default;
    MPNet has only the eager path); ``dropout`` overrides the hidden and
    attention dropout (None: keep the config's); ``pretrained=False``: random
    weights, where ``shape`` may replace config fields (e.g. ``hidden_size``: a
    BERT-base-shaped model from a small model's config and vocabulary)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if shape and pretrained:
        raise ValueError("a pretrained model keeps its shape; give shape= with pretrained=False")
    path = resolve_model_path(name_or_path)
    config = AutoConfig.from_pretrained(path, num_labels=len(label_names), **NO_REMOTE_CODE)
    config.update(dict(shape or {}))
    config.id2label = dict(enumerate(label_names))
    config.label2id = {name: i for i, name in enumerate(label_names)}
    if dropout is not None:
        for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout"):
            if hasattr(config, key):
                setattr(config, key, dropout)
    if pretrained:
        return AutoModelForSequenceClassification.from_pretrained(path, config=config, **NO_REMOTE_CODE)
    return AutoModelForSequenceClassification.from_config(config, **NO_REMOTE_CODE)


def load_frozen_classifier(path: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The frozen classifier (a teacher) of checkpoint folder ``path`` on ``device``, in
    eval mode, once the folder (no custom code) and its tokenizer have passed
    :func:`load_tokenizer`'s checks and its labels are the project's order
    (:func:`phishing_index` 1)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ModelFolderError(f"no teacher checkpoint at {folder} (train one with train_teacher.py)")
    check_weights(folder)
    load_tokenizer(str(folder))
    config = AutoConfig.from_pretrained(folder, **NO_REMOTE_CODE)
    if phishing_index(config, folder) != LABEL_NAMES.index("phishing"):
        # The student is trained on labels 0 legitimate, 1 phishing and matches the teacher's logits column by column.
        raise ModelFolderError(
            f"the teacher {folder} puts phishing in logit column 0 (id2label {config.id2label}); students learn "
            "column 1 as phishing, so its logits would teach the inverse: use a teacher trained with train_teacher.py"
        )
    model = AutoModelForSequenceClassification.from_pretrained(folder, config=config, **NO_REMOTE_CODE)
    return model.to(device).eval().requires_grad_(False)
