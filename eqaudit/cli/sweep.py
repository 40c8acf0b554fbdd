"""``eqaudit sweep``: one check's error over a range of one transform parameter (parsing and
printing around :func:`eqaudit.engine.sweep.run_sweep`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .errors import handles_errors
from .html_report import HtmlOpt, write_html
from .options import DebugOpt, DeviceOpt, QuietOpt, SeedOpt, TrustOpt, load_spec_file
from .output import check_inputs, check_outputs, emit, out, run_inputs
from ..errors import EqauditError
from ..io.outputs import output_error


@handles_errors()
def sweep(
    spec: Annotated[Path, typer.Option("--spec", "-s", help="The spec YAML.")] = ...,  # type: ignore[assignment]
    check: Annotated[str, typer.Option("--check", help="Name of the check to sweep.")] = ...,  # type: ignore[assignment]
    param: Annotated[str, typer.Option("--param", help="Parameter of the check's transform (e.g. degrees, dx).")] = ...,  # type: ignore[assignment]
    values: Annotated[str, typer.Option("--values", help="start:stop:step (inclusive) or a comma list.")] = ...,  # type: ignore[assignment]
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="Overrides model.checkpoint.")] = None,
    samples: Annotated[Optional[int], typer.Option(help="Monte Carlo sample size per value.")] = None,
    seed: SeedOpt = None,
    device: DeviceOpt = "auto",
    json_path: Annotated[Optional[str], typer.Option("--json", help="Write the curve as JSON ('-': stdout).")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write error versus parameter as a PNG (matplotlib).")] = None,
    html: HtmlOpt = None,
    trust_checkpoint: TrustOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Evaluate one check over a range of one transform parameter (error versus angle, shift...)."""
    from ..engine import sweep as sweeps

    the_spec = load_spec_file(spec)
    vals = sweeps.parse_values(values)
    inputs = run_inputs(spec, the_spec, checkpoint, "--checkpoint")
    check_inputs(the_spec, inputs)
    check_outputs({"--json": json_path, "--plot": plot, "--html": html}, inputs)
    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise EqauditError("--plot needs matplotlib", key="--plot",
                               hint="pip install 'eqaudit[plot]' (or matplotlib)") from None
    result = sweeps.run_sweep(None, the_spec, check, param, vals, samples=samples, seed=seed, device=device,
                              checkpoint=checkpoint, trust_checkpoint=trust_checkpoint)
    emit(json_path, "--json", json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n")
    if plot is not None:
        try:
            sweeps.plot_sweep(result, str(plot))
        except OSError as exc:
            raise output_error(plot, "--plot", exc) from None
    write_html(html, result.report, the_spec, sweep=result)
    if not quiet and json_path != "-":
        out.print(_table(result, check, param))


def _table(result: Any, check: str, param: str) -> Any:
    """The curve as a Rich table: value, mean, interval, spread."""
    from rich.table import Table

    from ..report import _g

    conf = result.report.checks[0].confidence
    table = Table(title=f"eqaudit sweep — {check}: {result.transform}.{param}",
                  caption=f"{result.report.samples} samples per value · seed {result.report.seed} · "
                          f"device {result.report.device} · distance {result.distance}")
    for col in (param, "mean", f"{conf * 100:g}% CI", "std"):
        table.add_column(col, justify="right", no_wrap=True)
    for p in result.points:
        table.add_row(str(p.value), _g(p.mean), f"[{_g(p.ci_low)}, {_g(p.ci_high)}]", _g(p.std))
    return table
