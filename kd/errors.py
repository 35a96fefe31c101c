"""The error convention of every command-line tool.

A mistake of the user (a bad option or config value, a missing or unusable
input file or model folder, a busy or mismatched run folder) prints **one
line** to stderr and exits with status 2, as argparse does for its own
errors; ``--debug`` anywhere on the command line shows the traceback
instead. A full, read-only or failing disk, or a missing permission (an
``OSError`` with an errno in :data:`IO_FAULTS`, raised or behind what was
raised) prints one line too and exits with status 1. Anything else is a bug
and keeps its traceback (status 1). A recipe
that a command runs as a process of its own (kd.demo, kd.ablation) and that
fails is a :class:`RecipeFailed`: one line, and the recipe's own status. An
input or output that cannot be read or written (a full or read-only disk) is
an :class:`OutputFailed`: one line, status 1.

What counts as the user's mistake, exactly:

- :class:`UsageError`, raised where the project checks its input;
- :class:`kd.data.sources.DataError`: a data source that cannot be read or used;
- :class:`models.paths.ModelFolderError`: no such model folder, custom code,
  a tokenizer that does not fit its model;
- any ``ValueError`` / ``FileNotFoundError`` raised while the configuration
  is built from the command line (inside :func:`usage_errors`), never later,
  where the same types may come from a bug.
"""
from __future__ import annotations

import errno
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from kd.data.sources import DataError
from models.paths import ModelFolderError

USAGE_STATUS = 2
IO_STATUS = 1
IO_FAULTS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})
"""Errnos of an I/O fault of the machine, not of the code: one line, status 1."""
DEBUG_FLAG = "--debug"


class UsageError(ValueError):
    """The user's mistake, with a message that says what was wrong and what to do."""


USER_ERRORS = (UsageError, DataError, ModelFolderError)


class OutputFailed(Exception):
    """An input or output could not be read or written (a full or read-only disk):
    not the user's mistake in what they typed, so status 1, but one line, saying
    what happened to the outputs."""


class RecipeFailed(Exception):
    """A recipe run as a process of its own exited with ``status`` (a negative one: killed
    by that signal); its own error is above, so this one is a single line."""

    def __init__(self, command: str, status: int):
        self.status = status
        if status > 0:
            super().__init__(f"{command} stopped with status {status} (its error is above)")
        else:
            name = signal.Signals(-status).name if -status in signal.valid_signals() else f"signal {-status}"
            hint = "; the kernel's out-of-memory killer sends it when memory runs out" if status == -signal.SIGKILL else ""
            super().__init__(f"{command} was killed by {name}{hint}")

    @property
    def exit_status(self) -> int:
        """The status this command exits with: the recipe's, or 128 + the signal as a shell reports it."""
        return self.status if self.status > 0 else 128 - self.status


@contextmanager
def usage_errors() -> Iterator[None]:
    """Turn ``ValueError`` / ``FileNotFoundError`` raised inside into :class:`UsageError`:
    wrap the code that builds a configuration from what the user typed."""
    try:
        yield
    except USER_ERRORS:
        raise
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(str(err)) from err


def io_fault(err: BaseException) -> OSError | None:
    """The ``OSError`` with an errno in :data:`IO_FAULTS` that is ``err`` or caused it
    (its ``__cause__`` / ``__context__`` chain), or ``None``."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in IO_FAULTS:
            return err
        err = err.__cause__ or err.__context__
    return None


def run_cli(main: Callable[[list[str]], object], argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Call ``main(argv)`` (``argv`` without ``--debug``) and return the exit status.

    A user error (:data:`USER_ERRORS`) prints ``PROG: error: MESSAGE`` on one
    line and returns 2, unless ``--debug`` was given: then it propagates with
    its traceback. :class:`RecipeFailed` prints one line and returns the
    recipe's status; :class:`OutputFailed` one line and 1 (its traceback with
    ``--debug``). An I/O fault (:func:`io_fault`) prints one line and returns 1.
    ``main`` returning an int returns it; anything else is 0.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv
    argv = [a for a in argv if a != DEBUG_FLAG]
    prog = prog or Path(sys.argv[0]).name
    try:
        result = main(argv)
    except USER_ERRORS as err:
        if debug:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{prog}: error: {message} (rerun with {DEBUG_FLAG} for the traceback)", file=sys.stderr)
        return USAGE_STATUS
    except RecipeFailed as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return err.exit_status
    except OutputFailed as err:
        if debug:
            raise
        print(f"{prog}: error: {err}", file=sys.stderr)
        return IO_STATUS
    except Exception as err:
        fault = io_fault(err)
        if fault is None or debug:
            raise
        where = f": {fault.filename}" if fault.filename else ""
        print(f"{prog}: error: cannot write or read{where}: {fault.strerror or fault} "
              f"(errno {errno.errorcode.get(fault.errno, fault.errno)}; rerun with {DEBUG_FLAG} for the traceback)",
              file=sys.stderr)
        return IO_STATUS
    return result if isinstance(result, int) and not isinstance(result, bool) else 0
