"""Files the user names for outputs (``--json``, ``--junit``, ``--markdown``, ``--plot``, the
fine-tuned checkpoint): checked before a long run (writable, never one of the run's inputs nor
another output), written atomically, failures named by option."""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

from .atomic import appends, temp_prefix, write_text_atomic, writes_in_place
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


def _is_stream(path: str | Path) -> bool:
    """Whether ``path`` names a stream rather than a file to compare: ``-`` (stdout) or a device,
    pipe or ``/dev``/``/proc`` link (written in place, never replaced)."""
    return str(path) == "-" or writes_in_place(path)


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one file: ``os.path.samefile`` when both exist (hard links,
    symlinks), else their resolved paths."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    try:
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):  # a symlink loop: compare as written
        return os.path.abspath(a) == os.path.abspath(b)


def check_distinct(outputs: Mapping[str, str | Path | None], inputs: Mapping[str, str | Path | None]) -> None:
    """Refuse (exit 2) an output that is the same file as an input the run reads, or as another
    output: a report written over the spec, the checkpoint or the data would destroy it.

    Keys are what the user wrote (``--json``, ``output.report``, ``$GITHUB_STEP_SUMMARY``;
    ``spec``, ``model.checkpoint``, ``input.data``). Streams (``-``, ``/dev/stdout``) are skipped.
    """
    files_out = [(key, Path(p)) for key, p in outputs.items() if p is not None and not _is_stream(p)]
    files_in = [(key, Path(p)) for key, p in inputs.items() if p is not None and str(p) != "-"]
    for i, (out_key, out_path) in enumerate(files_out):
        for in_key, in_path in files_in:
            if _same_file(out_path, in_path):
                raise EqauditError(
                    f"'{out_path}' is the {_what(in_key)} this run reads ({in_key}); an output never replaces an input",
                    key=out_key, hint=f"write {out_key} to another file")
        for other_key, other_path in files_out[:i]:
            if _same_file(out_path, other_path):
                raise EqauditError(f"{other_key} and {out_key} both write '{out_path}'", key=out_key,
                                   hint="give each output its own file")


def _what(key: str) -> str:
    """A short name for the input at ``key`` (``spec``, ``checkpoint``, ``data file``, ...)."""
    parts = [part for part in re.split(r"[.\[\]]", key) if part and not part.isdigit()]
    last = (parts[-1] if parts else key).lower().strip("-")
    return {"spec": "spec", "config": "config", "checkpoint": "checkpoint", "data": "data file",
            "path": "data file", "val_path": "validation data file", "factory": "factory code",
            "distance": "distance code", "dataset": "dataset code", "val_dataset": "dataset code",
            "task_loss": "task-loss code", "input": "transform code", "output": "transform code",
            "both": "transform code", "state": "resumable state"}.get(last, "file")
