"""``eqaudit measure``: audit a spec's checks and gate on their thresholds (parsing and printing
around :func:`eqaudit.engine.run.audit`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..report.heatmap import plot_layer_channels, require_plotting
from .errors import handles_errors
from .html_report import HtmlOpt, write_html
from .options import DebugOpt, DeviceOpt, QuietOpt, SeedOpt, TrustOpt, load_spec_file
from .output import check_inputs, check_outputs, err, escape, fail, note, out, run_inputs, with_progress

CheckpointArg = Annotated[Optional[list[Path]], typer.Argument(
    metavar="CHECKPOINT", show_default=False,
    help="Checkpoint file; overrides model.checkpoint in the spec. Several: each is audited on the same points "
         "and compared with the first (paired differences).")]
SpecOpt = Annotated[Path, typer.Option("--spec", "-s", help="The spec YAML (model, input, checks).")]
SamplesOpt = Annotated[Optional[int], typer.Option(help="Monte Carlo sample size (overrides the spec).")]
BatchOpt = Annotated[Optional[int], typer.Option("--batch-size", help="Samples per chunk (default: chosen automatically).")]
JsonOpt = Annotated[Optional[str], typer.Option("--json", help="Write the JSON report here ('-': stdout, no table).")]
JunitOpt = Annotated[Optional[Path], typer.Option("--junit", help="Write a JUnit XML report here.")]
MarkdownOpt = Annotated[Optional[Path], typer.Option("--markdown", help="Write the table as Markdown here.")]
GateOpt = Annotated[str, typer.Option("--gate", help="Compare the threshold with the 'mean' or the 'upper' confidence bound.")]
ConfidenceOpt = Annotated[float, typer.Option(help="Confidence level of the intervals.")]
PrecisionOpt = Annotated[Optional[str], typer.Option(
    "--precision",
    help="Forward passes in fp32 (default), bf16 or fp16 (autocast); or a number EPS: keep sampling "
         "until every check's confidence half-width is <= EPS (or --max-samples).")]
MaxSamplesOpt = Annotated[Optional[int], typer.Option("--max-samples", help="Sample cap for --precision EPS (default 16x samples).")]
QuantilesOpt = Annotated[bool, typer.Option("--quantiles", help="Add p50, p95, p99 and max columns to the table.")]
LayersOpt = Annotated[bool, typer.Option("--layers", help="Print the per-layer table (spec key 'layers').")]
PlotLayersOpt = Annotated[Optional[Path], typer.Option(
    "--plot-layers", help="Write the layers x channels heatmap as a PNG (spec key layers: {per_channel: true}; "
                          "needs matplotlib, the 'plot' extra).")]
CompileOpt = Annotated[bool, typer.Option(
    "--compile", help="Wrap the model in torch.compile; on a GPU also run each random draw as one compiled kernel "
                      "(same numbers, fewer kernel launches).")]
BaselineOpt = Annotated[Optional[Path], typer.Option(
    "--baseline", help="An earlier JSON report of the same spec: report each check's change against it, with a "
                       "confidence interval (paired when both carry per-sample errors of the same points, else Welch).")]
RegressionOpt = Annotated[Optional[str], typer.Option(
    "--fail-on-regression",
    help="Allowed relative increase of a check's mean (10% or 0.1): exit 1 when the lower confidence bound of the "
         "increase exceeds it. With --baseline the default is 0 (any significant increase; 'off': report only); "
         "with several checkpoints or in compare, regressions fail the run only when this is given.")]
SaveSamplesOpt = Annotated[bool, typer.Option(
    "--save-samples", help="Keep every check's per-sample errors in the JSON report (samples_errors), so that a "
                           "later run of the same spec and seed with --baseline pairs with them.")]


@handles_errors(flags={"checkpoint": "CHECKPOINT"})
def measure(
    checkpoint: CheckpointArg = None,
    spec: SpecOpt = ...,  # type: ignore[assignment]
    samples: SamplesOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = None,
    json_path: JsonOpt = None,
    junit: JunitOpt = None,
    markdown: MarkdownOpt = None,
    html: HtmlOpt = None,
    gate: GateOpt = "mean",
    confidence: ConfidenceOpt = 0.95,
    precision: PrecisionOpt = None,
    max_samples: MaxSamplesOpt = None,
    quantiles: QuantilesOpt = False,
    layers: LayersOpt = False,
    plot_layers: PlotLayersOpt = None,
    compile_model: CompileOpt = False,
    baseline: BaselineOpt = None,
    fail_on_regression: RegressionOpt = None,
    save_samples: SaveSamplesOpt = False,
    trust_checkpoint: TrustOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Estimate each check's equivariance error; exit 1 if any exceeds its threshold.

    Several checkpoints are audited on the same points and compared with the first; --baseline
    compares the run with an earlier report (exit 1 on a regression).

    Under torchrun (python -m torch.distributed.run --nproc-per-node N -m eqaudit measure ...)
    the samples are split across processes and rank 0 writes the reports.
    """
    from ..engine.run import audit
    from . import measure_many as many

    the_spec = load_spec_file(spec)
    paths: list[Path | None] = list(checkpoint or [None])
    inputs = _inputs(spec, the_spec, paths, baseline)
    base = many.read_baseline(baseline)  # a bad one is refused before the run
    require_plotting("--plot-layers", the_spec, plot_layers, len(paths))
    check_outputs({"--json": json_path, "--junit": junit, "--markdown": markdown, "--html": html,
                   "--plot-layers": plot_layers}, inputs)  # before the long run
    to_stdout = json_path == "-"

    def run(path: Path | None, keep_samples: bool) -> Any:
        return with_progress(
            not quiet and not to_stdout and err.is_terminal, "measuring",
            lambda progress: audit(None, the_spec, samples=samples, seed=seed, device=device, batch_size=batch_size,
                                   confidence=confidence, gate=gate, progress=progress, checkpoint=path,
                                   trust_checkpoint=trust_checkpoint, precision=precision, compile=compile_model,
                                   max_samples=max_samples, keep_samples=keep_samples),
            total=samples if samples is not None else the_spec.samples)

    outputs = many.Outputs(json_path, junit, markdown, quiet or to_stdout, save_samples, fail_on_regression)
    if len(paths) > 1:
        _one_html(html)
        raise typer.Exit(many.measure_several(the_spec, paths, run, outputs))
    report = run(paths[0], many.keeps_samples(outputs, base))
    from ..engine.distributed import current_world

    kept, comparison = many.with_baseline(report, base, outputs)
    if current_world().is_main:  # every rank holds the same report; one writes it
        many.write_single(report, kept, base, comparison, outputs)
        if plot_layers is not None:
            plot_layer_channels(report, plot_layers)
        write_html(html, report, the_spec, checkpoint=paths[0], trust_checkpoint=trust_checkpoint, device=device)
        if not outputs.quiet:
            _print(report, the_spec, quantiles, layers)
            many.print_comparison(comparison)
        for check in report.errors:  # a check that could not be measured: its own error line, exit 2
            fail(escape(check.error))
    raise typer.Exit(many.exit_code([report.exit_code, comparison.exit_code if comparison else 0]))


def _one_html(html: Path | None) -> None:
    """--html shows one run: refuse it with several checkpoints."""
    if html is not None:
        from ..errors import EqauditError

        raise EqauditError("--html shows the run of one checkpoint", key="--html",
                           hint="audit each checkpoint with its own --html, or drop --html")


def _inputs(spec_path: Path, the_spec: Any, paths: list[Path | None], baseline: Path | None) -> dict[str, Any]:
    """The run's input files by the option that names them, checked (exist, regular files)."""
    from ..errors import EqauditError

    for path in paths:
        if path is not None and not path.exists():
            raise EqauditError("checkpoint file not found", file=str(path), hint="check the path")
    if baseline is not None and len(paths) > 1:
        raise EqauditError("--baseline compares the run of one checkpoint; several checkpoints are compared with "
                           "the first", key="--baseline", hint="give one checkpoint, or compare the reports")
    inputs = run_inputs(spec_path, the_spec, paths[0], "CHECKPOINT")
    inputs.update({f"CHECKPOINT {i + 1}": p for i, p in enumerate(paths[1:], 1)})
    inputs["--baseline"] = baseline
    check_inputs(the_spec, inputs)
    return inputs


def _print(report: Any, spec: Any, quantiles: bool, layers: bool) -> None:
    """The tables on stdout; notes and the failed checks on stderr (when some check could not be
    measured, its error line alone speaks on stderr: exit 2)."""
    from ..report.render import rich_table
    from .draws import independent_draw_notes, shared_draws

    out.print(rich_table(report, out.width, quantiles=quantiles, shared=shared_draws(spec)))
    layer_table = report.layers_table() if layers else None
    if layer_table is not None:
        out.print(layer_table)
    elements = report.elements_table()
    if elements is not None:
        out.print(elements)
    if report.errors:
        return
    for text in [*report.notes, *independent_draw_notes(spec)]:
        note(text)
    if not report.passed:
        from ..report.render import exceeded

        err.print(f"[bold red]FAILED[/]: {escape(exceeded([c.name for c in report.checks if not c.passed]))}")
