"""Atomic file writes: a temporary file in the target's folder, fsync, then rename.

Readers (and a run killed at any moment) see the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: The process's umask, read once at import (reading it means setting it, which is not thread-safe).
_UMASK = _umask()


def writes_in_place(path: str | Path) -> bool:
    """Whether an output at ``path`` must be written into the existing file rather than replaced
    by an atomic rename: a device or pipe, or a link such as ``/dev/stdout`` or ``/proc/self/fd/N``
    even when it leads to a regular file (shell redirection). A rename would replace the link, or
    as root the device itself (``/dev/null``), instead of writing to it."""
    target = Path(path)
    if not target.exists():
        return False
    if not target.is_file():
        return True
    return os.path.islink(target) and Path(os.path.abspath(target)).parts[1:2] in (("dev",), ("proc",))


def temp_prefix(path: Path) -> str:
    """The prefix of the temporary files written beside ``path`` (to find stale ones)."""
    return f".{path.name}."


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary file in ``path``'s folder, fsync it, then rename it onto
    ``path``: readers see the old file or the new one, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # the mode of the file it replaces, or of a new file (mkstemp's own is 0600)
        mode = path.stat().st_mode & 0o7777
    except OSError:
        mode = 0o666 & ~_UMASK
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode)  # after writing: the writer may replace the file (safetensors does)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def appends(path: str | Path) -> bool:
    """Whether :func:`write_text_atomic` appends to ``path`` rather than replacing it."""
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    return writes_in_place(path) or bool(summary and Path(path).resolve() == Path(summary).resolve())


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically.

    Special files (``/dev/stdout``, pipes: :func:`writes_in_place`) are appended to, and so is
    the GitHub job summary file (``$GITHUB_STEP_SUMMARY``), as GitHub expects.
    """
    path = Path(path)
    if appends(path):
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(text)
        return
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
