"""The one output sink of the commands: results to stdout (a table, or JSON with ``-``), notes
and errors to stderr, report files checked before the run and written atomically."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rich.console import Console

from ..errors import EqauditError
from ..io.files import require_regular_file
from ..io.outputs import check_distinct, check_output, write_output

out = Console(soft_wrap=False)
err = Console(stderr=True, soft_wrap=True)


def escape(text: str) -> str:
    """``text`` with Rich markup escaped."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def fail(message: str) -> None:
    """Print one error line on stderr (``message`` may hold Rich markup; escape user text)."""
    from ..errors import one_line

    err.print(f"[bold red]eqaudit: error:[/] {one_line(message)}", highlight=False, markup=True, soft_wrap=True)


def note(message: str) -> None:
    """A note on stderr."""
    err.print(f"[yellow]note:[/] {escape(message)}")


def check_outputs(outputs: Mapping[str, Any], inputs: Mapping[str, Any]) -> None:
    """Refuse, before the run, outputs that cannot be written, that would replace one of the run's
    inputs, or that two options would both write (``-`` is stdout, not a file)."""
    files = {flag: path for flag, path in outputs.items() if path is not None and str(path) != "-"}
    for flag, path in files.items():
        check_output(path, flag)
    check_distinct({_summary_label(flag, path): path for flag, path in files.items()}, inputs)


def _summary_label(flag: str, path: Any) -> str:
    """``--markdown ($GITHUB_STEP_SUMMARY)`` for an output that is the job summary (appended to)."""
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    try:
        same = bool(summary) and Path(path).resolve() == Path(summary).resolve()
    except (OSError, RuntimeError):
        same = False
    return f"{flag} ($GITHUB_STEP_SUMMARY)" if same else flag


def check_inputs(spec: Any, inputs: Mapping[str, Any]) -> None:
    """Refuse, before anything opens them, inputs that are not regular files (a FIFO or device
    would block the run); spec keys are located in the spec, options name themselves."""
    for key, path in inputs.items():
        if path is None or not Path(path).exists():
            continue  # a missing file is reported by whatever reads it, with its own hint
        try:
            require_regular_file(path, "file")
        except EqauditError as exc:
            if key.startswith("-") or key.isupper():
                raise EqauditError(exc.message, key=key, hint=exc.hint) from None
            raise spec.error(key, exc.message, exc.hint) from None


def run_inputs(spec_path: Path, spec: Any, checkpoint: Path | None, checkpoint_key: str) -> dict[str, Any]:
    """Every file a run of ``spec`` reads, by the key or option that names it."""
    return {"spec": spec_path, **spec.input_files(), checkpoint_key: checkpoint}


def emit(path: str | Path | None, flag: str, text: str) -> None:
    """Write ``text`` to the file of option ``flag``, or to stdout when it is ``-``."""
    if path is None:
        return
    if str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_output(path, flag, text)


def with_progress(show: bool, label: str, job: Callable[[Any], Any], total: int | None = None) -> Any:
    """Run ``job(progress)`` with a transient progress bar on stderr (``progress(done, total)``);
    ``total``: the sample count known before the run, shown from the start (not ``0/?``)."""
    if not show:
        return job(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("samples"),
                  TimeRemainingColumn(), console=err, transient=True) as bar:
        task = bar.add_task(label, total=total)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return job(progress)
