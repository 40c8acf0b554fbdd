"""``eqaudit compare``: reports already written, side by side against the first (the change of
each check's mean with its confidence interval, and the regressions), without running a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import handles_errors
from .options import DebugOpt, QuietOpt

ReportsArg = Annotated[list[Path], typer.Argument(
    metavar="REPORTS",
    help="JSON reports of the same spec (eqaudit measure --json); the first is the reference. A multi-checkpoint "
         "report counts as one report per checkpoint.")]
MarkdownOpt = Annotated[Optional[Path], typer.Option("--markdown", help="Write the comparison as Markdown here.")]
JsonOpt = Annotated[Optional[str], typer.Option(
    "--json", help="Write the comparison as JSON here ('-': stdout, no table).")]
RegressionOpt = Annotated[Optional[str], typer.Option(
    "--fail-on-regression",
    help="Exit 1 when a check's increase over the reference exceeds this relative change at the lower confidence "
         "bound (10% or 0.1; 0: any significant increase). Without it regressions are shown, not gated.")]


@handles_errors()
def compare(
    reports: ReportsArg,
    markdown: MarkdownOpt = None,
    json_path: JsonOpt = None,
    fail_on_regression: RegressionOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Compare JSON reports of the same spec with the first; exit 2 when their specs differ."""
    from ..errors import EqauditError
    from ..report import compare_render
    from ..report.compare import compare_reports, parse_tolerance, read_reports, require_same_spec
    from .measure_many import print_comparison
    from .output import check_outputs, emit

    check_outputs({"--json": json_path, "--markdown": markdown},
                  {f"REPORTS {i + 1}": path for i, path in enumerate(reports)})
    keyed = [(f"REPORTS {i + 1}", r) for i, path in enumerate(reports)
             for r in read_reports(str(path), f"REPORTS {i + 1}")]
    found = [r for _, r in keyed]
    if len(found) < 2:
        raise EqauditError("compare needs at least two reports", key="REPORTS",
                           hint="eqaudit compare main.json branch.json")
    for key, r in keyed[1:]:
        require_same_spec(found[0].report, r.report, found[0].label, r.label, key)
    tolerance = parse_tolerance(fail_on_regression, "--fail-on-regression")
    comparison = compare_reports([r.report for r in found], [r.label for r in found], tolerance or 0.0,
                                 gated=tolerance is not None, samples=[r.samples for r in found])
    emit(json_path, "--json", json.dumps(comparison.to_dict(), indent=2, allow_nan=False) + "\n")
    emit(markdown, "--markdown", compare_render.markdown(comparison))
    if not quiet and json_path != "-":
        print_comparison(comparison)
    raise typer.Exit(comparison.exit_code)
