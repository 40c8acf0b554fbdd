"""``eqaudit measure``: audit a spec's checks and gate on their thresholds (parsing and printing
around :func:`eqaudit.audit.run.audit`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .errors import handles_errors
from .options import DebugOpt, DeviceOpt, QuietOpt, SeedOpt, TrustOpt, load_spec_file
from .output import check_inputs, check_outputs, emit, err, escape, fail, note, out, run_inputs, with_progress

CheckpointArg = Annotated[Optional[Path], typer.Argument(help="Checkpoint file; overrides model.checkpoint in the spec.")]
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
CompileOpt = Annotated[bool, typer.Option("--compile", help="Wrap the model in torch.compile.")]


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
    gate: GateOpt = "mean",
    confidence: ConfidenceOpt = 0.95,
    precision: PrecisionOpt = None,
    max_samples: MaxSamplesOpt = None,
    quantiles: QuantilesOpt = False,
    layers: LayersOpt = False,
    compile_model: CompileOpt = False,
    trust_checkpoint: TrustOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Estimate each check's equivariance error; exit 1 if any exceeds its threshold.

    Under torchrun (python -m torch.distributed.run --nproc-per-node N -m eqaudit measure ...)
    the samples are split across processes and rank 0 writes the reports.
    """
    from ..audit.run import audit
    from ..errors import EqauditError

    the_spec = load_spec_file(spec)
    if checkpoint is not None and not checkpoint.exists():
        raise EqauditError("checkpoint file not found", file=str(checkpoint), hint="check the path")
    inputs = run_inputs(spec, the_spec, checkpoint, "CHECKPOINT")
    check_inputs(the_spec, inputs)
    check_outputs({"--json": json_path, "--junit": junit, "--markdown": markdown}, inputs)  # before the long run
    to_stdout = json_path == "-"
    report = with_progress(
        not quiet and not to_stdout and err.is_terminal, "measuring",
        lambda progress: audit(None, the_spec, samples=samples, seed=seed, device=device, batch_size=batch_size,
                               confidence=confidence, gate=gate, progress=progress, checkpoint=checkpoint,
                               trust_checkpoint=trust_checkpoint, precision=precision, compile=compile_model,
                               max_samples=max_samples))
    from ..audit.distributed import current_world

    if current_world().is_main:  # every rank holds the same report; one writes it
        emit(json_path, "--json", report.to_json() + "\n")
        emit(junit, "--junit", report.to_junit())
        emit(markdown, "--markdown", report.to_markdown())
        if not quiet and not to_stdout:
            _print(report, quantiles, layers)
        for check in report.errors:  # a check that could not be measured: its own error line, exit 2
            fail(escape(check.error))
    raise typer.Exit(report.exit_code)


def _print(report: Any, quantiles: bool, layers: bool) -> None:
    """The tables on stdout; notes and the failed checks on stderr (when some check could not be
    measured, its error line alone speaks on stderr: exit 2)."""
    out.print(report.rich_table(out.width, quantiles=quantiles))
    layer_table = report.layers_table() if layers else None
    if layer_table is not None:
        out.print(layer_table)
    elements = report.elements_table()
    if elements is not None:
        out.print(elements)
    if report.errors:
        return
    for text in report.notes:
        note(text)
    if not report.passed:
        failed = ", ".join(c.name for c in report.checks if not c.passed)
        err.print(f"[bold red]FAILED[/]: {escape(failed)} exceed their thresholds")
