"""Outputs that never destroy an input and appear whole or not at all.

Two rules of the design, shared by every recipe and tool:

- an output that equals, contains or lies inside an input is refused
  (:func:`check_apart`), compared by resolved path, so ``runs/x/best`` (a link
  into ``runs/x/checkpoints``) lies inside ``runs/x``;
- a folder is written under a new temporary name beside its final one and
  renamed into place last (:func:`publish_folder`): a crash, a full disk or Ctrl-C
  leaves the previous folder, or none, never a half-written one that a loader
  would take for complete.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from kd.errors import UsageError
from kd.eval.report import temp_path_beside


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_apart(output: str | Path, output_option: str, inputs: dict[str, str | Path | None]) -> None:
    """Raise :class:`UsageError` if ``output`` equals, contains or lies inside any
    of ``inputs`` (``{option: path}``), by resolved path. An input that is
    ``None`` or no existing path (a hub name, a ``packaged:`` alias) is skipped.
    Nothing is read or written."""
    out = Path(output).resolve()
    for option, path in inputs.items():
        if path is None or not Path(path).exists():
            continue
        source = Path(path).resolve()
        if _overlap(out, source):
            resolved = "" if (str(out), str(source)) == (str(output), str(path)) else f" ({out} and {source})"
            raise UsageError(f"{output_option} {output} and {option} {path} overlap{resolved}: writing there would "
                             f"overwrite or delete the input; pick an {output_option} outside {option} and not above it")


def publish_folder(final: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on an empty folder beside ``final`` and rename it to ``final``.

    An existing ``final`` is replaced only once the new folder is complete. If
    ``write`` raises (or Ctrl-C), the temporary folder is removed and ``final``
    is left as it was. The temporary (and the previous ``final`` while it is
    swapped out) go under names no file has (:func:`kd.eval.report.temp_path_beside`),
    created here: nothing this call did not create is removed, not another
    process's temporary. Returns ``final``.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_beside(final)
    tmp.mkdir()
    try:
        write(tmp)
        if final.exists():
            old = temp_path_beside(final)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
