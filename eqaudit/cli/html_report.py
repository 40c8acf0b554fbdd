"""``--html PATH`` of measure and sweep: gather the samples behind the report (the first samples
evaluated again, :func:`eqaudit.engine.worst.check_samples`) and write the self-contained page
(:func:`eqaudit.report.html.render_html`) atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..io.outputs import write_output

HtmlOpt = Annotated[Optional[Path], typer.Option(
    "--html", help="Write a self-contained HTML report here (tables, error histograms, the worst samples of "
                   "each failing check; no network needed to view it).")]


def write_html(path: Path | None, report: Any, spec: Any, *, checkpoint: Any = None, trust_checkpoint: bool = False,
               device: Any = "auto", sweep: Any = None) -> None:
    """Write the HTML report of ``report`` (or of ``sweep``) to ``path`` (nothing when None)."""
    if path is None:
        return
    from ..engine.worst import LIMIT, check_samples
    from ..report.html import render_html

    samples: list[Any] = []
    if sweep is None and not report.errors:
        failing = {c.name for c in report.checks if not c.passed}
        samples = check_samples(spec, checkpoint=checkpoint, trust_checkpoint=trust_checkpoint, device=device,
                                seed=report.seed, limit=min(LIMIT, report.samples), worst_of=failing)
    shared = frozenset(c.name for c in spec.checks if c.both)
    write_output(path, "--html", render_html(report, samples, sweep, shared))
