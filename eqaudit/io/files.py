"""Input files are regular files: a FIFO or a device given as a checkpoint, data file or spec
would block the run forever (or read without end), so it is refused before anything opens it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import EqauditError


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words (``a FIFO (named pipe)``, ``a character device``...)."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def require_regular_file(path: str | Path, what: str = "file") -> None:
    """Raise :class:`EqauditError` (no location: the caller adds its key) unless ``path`` is an
    existing regular file (links are followed). Never opens the file, so a FIFO cannot block."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise EqauditError(f"{what} '{path}' not found", hint="check the path") from None
    except OSError as exc:
        raise EqauditError(f"cannot read {what} '{path}': {exc.strerror or exc}",
                           hint="check the path and its permissions") from None
    if not stat.S_ISREG(mode):
        kind = file_kind(mode)
        hint = "name the file itself" if stat.S_ISDIR(mode) else "copy it to a regular file first; a pipe or device would block the run"
        raise EqauditError(f"{what} '{path}' is {kind}, not a regular file", hint=hint)
