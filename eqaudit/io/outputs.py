"""Files the user names for outputs (``--json``, ``--junit``, ``--markdown``, ``--plot``, the
fine-tuned checkpoint): checked before a long run, written atomically, failures named by option."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from .atomic import appends, temp_prefix, write_text_atomic
from ..errors import EqauditError


def check_output(path: str | Path | None, flag: str) -> None:
    """Refuse an output file that cannot be written, before the (long) run starts: a directory, a
    path through a file, or a folder where no file can be created (probed with a temporary file)."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        example = {"--junit": "report.xml", "--markdown": "report.md", "--plot": "sweep.png", "--json": "report.json",
                   "output.checkpoint": "tuned.safetensors"}.get(flag)
        raise EqauditError(f"'{path}' is a directory", key=flag,
                           hint="give a file path" + (f", e.g. {example}" if example else ""))
    if appends(target):
        return  # /dev/stdout, a pipe, the job summary: written (appended) in place, not replaced
    folder = target.parent
    while not folder.exists() and folder != folder.parent:  # atomic writes create missing folders
        folder = folder.parent
    if not folder.is_dir():
        raise EqauditError(f"cannot write '{path}': '{folder}' is a file, not a folder", key=flag)
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(target), suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise EqauditError(f"cannot write '{path}': cannot create files in folder '{folder}': {exc.strerror}",
                           key=flag, hint="choose a writable folder") from None


def write_output(path: str | Path, flag: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically; a failure names the option and the path (exit 2)."""
    try:
        write_text_atomic(path, text)
    except OSError as exc:
        raise output_error(path, flag, exc) from None


def output_error(path: str | Path, flag: str, exc: OSError) -> EqauditError:
    """The one-line error of a failed write of ``path`` (given as option or key ``flag``)."""
    why = {errno.EISDIR: "it is a directory", errno.ENOENT: "no such folder",
           errno.ENOTDIR: "a part of the path is a file, not a folder",
           errno.EEXIST: "a part of the path is a file, not a folder"}.get(exc.errno or 0, exc.strerror or str(exc))
    return EqauditError(f"cannot write '{path}': {why}", key=flag)
