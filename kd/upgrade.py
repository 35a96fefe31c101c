"""Bring a model folder saved before the tokenizer carried the URL normalisation
up to date, in place.

    python -m kd.upgrade FOLDER

Its tokenizer gets the project's URL normalisation
(:func:`kd.data.urls.with_url_normalizer`), so that ``transformers.pipeline``
on a raw URL scores what ``kd.predict`` scores, and ``config.json`` records the
new tokenizer's fingerprint; a folder with a ``metrics.json`` also gets its
threshold fields in ``config.json`` and its model card
(:func:`kd.eval.model_card.describe_folder`). The weights are not touched. The tokenizer must
first pass the folder's own checks (its recorded fingerprint, its size): an
upgrade never makes a wrong tokenizer look right.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from kd.data.urls import has_url_normalizer, with_url_normalizer
from kd.errors import UsageError, run_cli
from kd.eval.model_card import describe_folder
from kd.eval.report import write_json
from models.encoder import load_tokenizer
from models.paths import TOKENIZER_FINGERPRINT, ModelFolderError, check_model_folder, tokenizer_fingerprint

UPGRADE_COMMAND = "python -m kd.upgrade"
"""The command that :func:`upgrade_folder` runs as, named in the notes that point to it."""


def upgrade_folder(folder: str | Path) -> bool:
    """Give ``folder``'s tokenizer the URL normalisation; ``False`` if it had it.

    The tokenizer files are written beside the folder first and each renamed
    into it; ``config.json`` (with the new :data:`TOKENIZER_FINGERPRINT`) last.
    """
    folder = Path(folder)
    check_model_folder(folder)
    tokenizer = load_tokenizer(str(folder))
    if has_url_normalizer(tokenizer):
        return False
    tokenizer = with_url_normalizer(tokenizer)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.upgrade-") as tmp:
        for name in tokenizer.save_pretrained(tmp):
            os.replace(name, folder / Path(name).name)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config[TOKENIZER_FINGERPRINT] = tokenizer_fingerprint(tokenizer)
    write_json(folder / "config.json", config)
    if (folder / "metrics.json").is_file():
        describe_folder(folder)
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=UPGRADE_COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument("folder", help="a model folder saved by this project (best/, a quantized variant)")
    args = parser.parse_args(argv)
    if not (Path(args.folder) / "config.json").is_file():
        raise UsageError(f"{args.folder} is no model folder (it has no config.json)")
    try:
        changed = upgrade_folder(args.folder)
    except (ModelFolderError, ValueError) as err:
        raise UsageError(str(err)) from err
    print(f"{args.folder}: " + ("its tokenizer now normalises URLs" if changed else "already up to date"))


if __name__ == "__main__":
    raise SystemExit(run_cli(main, prog=UPGRADE_COMMAND))
