"""Atomic file writes: a temporary file in the target's folder, fsync, then rename.

Readers (and a run killed at any moment) see the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def temp_prefix(path: Path) -> str:
    """The prefix of the temporary files written beside ``path`` (to find stale ones)."""
    return f".{path.name}."


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary file in ``path``'s folder, fsync it, then rename it onto
    ``path``: readers see the old file or the new one, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
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


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically.

    Special files (``/dev/stdout``, pipes) are written directly, and the GitHub job summary file
    (``$GITHUB_STEP_SUMMARY``) is appended to, as GitHub expects.
    """
    path = Path(path)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if (summary and path.resolve() == Path(summary).resolve()) or (path.exists() and not path.is_file()):
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(text)
        return
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
