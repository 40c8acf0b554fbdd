"""The ``eqaudit`` command line: a thin layer over the library (parsing and printing only).

Exit codes: 0 every check within its threshold; 1 some check exceeds it; 2 could not run.
Heavy imports (torch) happen inside the commands so that ``--help`` is instant.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console

from ..errors import EqauditError
from ..io.outputs import check_distinct, check_output, output_error, write_output

app = typer.Typer(
    name="eqaudit",
    help="Audit how equivariant a trained PyTorch model is, gate CI on it, and fine-tune toward it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

out = Console(soft_wrap=False)
err = Console(stderr=True, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])

# -- shared option aliases ----------------------------------------------------------------------
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors; the exit code tells.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:K.")]
TrustOpt = Annotated[
    bool,
    typer.Option(
        "--trust-checkpoint",
        help="Allow loading a pickled whole model (this executes code stored in the file).",
    ),
]


def fail(message: str) -> None:
    """Print one error line on stderr."""
    from ..errors import one_line

    err.print(f"[bold red]eqaudit: error:[/] {one_line(message)}", highlight=False, markup=True, soft_wrap=True)


def handles_errors(fn: F) -> F:
    """Turn known errors into one line and exit code 2 (tracebacks only with ``--debug``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool(kwargs.get("debug", False))
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except EqauditError as exc:
            if debug:
                raise
            fail(_escape(str(exc)))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            fail("interrupted")
            raise typer.Exit(130) from None
        except SystemExit as exc:  # sys.exit() in the user's factory, model or transform code:
            if debug:  # its code would pass (0) or fail the gate without an audit: always exit 2
                import traceback

                traceback.print_exc()
            fail(_escape(f"the model's code called sys.exit({exc.code!r})")
                 + ("" if debug else " (run again with --debug for the traceback)"))
            raise typer.Exit(2) from None
        except Exception as exc:  # a bug, or an error we did not anticipate
            if debug:
                raise
            from ..errors import first_line

            fail(_escape(first_line(exc)) + " (run again with --debug for the traceback)")
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


# -- measure ------------------------------------------------------------------------------------
@app.command()
@handles_errors
def measure(
    checkpoint: Annotated[
        Optional[Path], typer.Argument(help="Checkpoint file; overrides model.checkpoint in the spec.")
    ] = None,
    spec: Annotated[Path, typer.Option("--spec", "-s", help="The spec YAML (model, input, checks).")] = ...,  # type: ignore[assignment]
    samples: Annotated[Optional[int], typer.Option(help="Monte Carlo sample size (overrides the spec).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed (overrides the spec).")] = None,
    device: DeviceOpt = "auto",
    batch_size: Annotated[
        Optional[int], typer.Option("--batch-size", help="Samples per chunk (default: chosen automatically).")
    ] = None,
    json_path: Annotated[Optional[str], typer.Option("--json", help="Write the JSON report here ('-': stdout, no table).")] = None,
    junit: Annotated[Optional[Path], typer.Option("--junit", help="Write a JUnit XML report here.")] = None,
    markdown: Annotated[Optional[Path], typer.Option("--markdown", help="Write the table as Markdown here.")] = None,
    gate: Annotated[
        str, typer.Option("--gate", help="Compare the threshold with the 'mean' or the 'upper' confidence bound.")
    ] = "mean",
    confidence: Annotated[float, typer.Option(help="Confidence level of the intervals.")] = 0.95,
    precision: Annotated[
        Optional[str],
        typer.Option(
            "--precision",
            help="Forward passes in fp32 (default), bf16 or fp16 (autocast); or a number EPS: keep sampling "
            "until every check's confidence half-width is <= EPS (or --max-samples).",
        ),
    ] = None,
    max_samples: Annotated[
        Optional[int], typer.Option("--max-samples", help="Sample cap for --precision EPS (default 16x samples).")
    ] = None,
    quantiles: Annotated[bool, typer.Option("--quantiles", help="Add p50, p95, p99 and max columns to the table.")] = False,
    layers: Annotated[bool, typer.Option("--layers", help="Print the per-layer table (spec key 'layers').")] = False,
    compile_model: Annotated[bool, typer.Option("--compile", help="Wrap the model in torch.compile.")] = False,
    trust_checkpoint: TrustOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Estimate each check's equivariance error; exit 1 if any exceeds its threshold.

    Under torchrun (python -m torch.distributed.run --nproc-per-node N -m eqaudit measure ...)
    the samples are split across processes and rank 0 writes the reports.
    """
    from ..audit.run import audit

    if gate not in ("mean", "upper"):
        raise EqauditError(f"unknown gate '{gate}'", key="--gate", hint="use mean or upper")
    if not 0.0 < confidence < 1.0:
        raise EqauditError(f"must lie in (0, 1), got {confidence}", key="--confidence")
    the_spec = _load_spec_file(spec)
    if checkpoint is not None and not checkpoint.exists():
        raise EqauditError("checkpoint file not found", file=str(checkpoint), hint="check the path")
    json_to_stdout = json_path == "-"
    check_outputs({"--json": json_path, "--junit": junit, "--markdown": markdown},
                  run_inputs(spec, the_spec, checkpoint, "CHECKPOINT"))  # before the run, which may be long
    show_progress = not quiet and not json_to_stdout and err.is_terminal
    report = _with_progress(
        show_progress,
        lambda progress: audit(
            None,
            the_spec,
            samples=samples,
            seed=seed,
            device=device,
            batch_size=batch_size,
            confidence=confidence,
            gate=gate,
            progress=progress,
            checkpoint=checkpoint,
            trust_checkpoint=trust_checkpoint,
            precision=precision,
            compile=compile_model,
            max_samples=max_samples,
        ),
    )
    from ..audit.distributed import current_world

    if not current_world().is_main:  # every rank holds the same report; one writes it
        raise typer.Exit(report.exit_code)
    if json_path is not None:
        if json_to_stdout:
            sys.stdout.write(report.to_json() + "\n")
            sys.stdout.flush()
        else:
            write_output(json_path, "--json", report.to_json() + "\n")
    if junit is not None:
        write_output(junit, "--junit", report.to_junit())
    if markdown is not None:
        write_output(markdown, "--markdown", report.to_markdown())
    if not quiet and not json_to_stdout:
        out.print(report.rich_table(out.width, quantiles=quantiles))
        layer_table = report.layers_table() if layers else None
        if layer_table is not None:
            out.print(layer_table)
        elements = report.elements_table()
        if elements is not None:
            out.print(elements)
        for note in report.notes:
            err.print(f"[yellow]note:[/] {_escape(note)}")
        if not report.passed:
            failed = ", ".join(c.name for c in report.checks if not c.passed)
            err.print(f"[bold red]FAILED[/]: {_escape(failed)} exceed their thresholds")
    raise typer.Exit(report.exit_code)


def check_outputs(outputs: dict[str, Any], inputs: dict[str, Any]) -> None:
    """Refuse, before the run, outputs that cannot be written, that would replace one of the run's
    inputs, or that two options would both write (``-`` is stdout, not a file)."""
    outputs = {flag: None if str(path) == "-" else path for flag, path in outputs.items() if path is not None}
    for flag, path in outputs.items():
        check_output(path, flag)
    check_distinct(outputs, inputs)


def run_inputs(spec_path: Path, the_spec: Any, checkpoint: Optional[Path], checkpoint_key: str) -> dict[str, Any]:
    """Every file a run of ``the_spec`` reads, by the key or option that names it."""
    return {"spec": spec_path, **the_spec.input_files(), checkpoint_key: checkpoint}


def _load_spec_file(path: Path) -> Any:
    """A spec, or the spec part of a fine-tune config (its training keys validated too)."""
    from ..finetune import FINETUNE_KEYS, parse_config
    from ..spec import parse_spec
    from ..io.yaml_source import load_yaml

    src = load_yaml(path)
    base = Path(path).resolve().parent
    if isinstance(src.data, dict) and any(k in src.data for k in FINETUNE_KEYS):
        return parse_config(src, base_dir=base).spec
    return parse_spec(src, base_dir=base)


def _with_progress(show: bool, job: Callable[[Any], Any]) -> Any:
    if not show:
        return job(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[bold]measuring"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("samples"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("measure", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return job(progress)


# -- validate -----------------------------------------------------------------------------------
@app.command()
@handles_errors
def validate(
    spec: Annotated[Path, typer.Argument(help="The spec YAML to check.")],
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Check a spec or fine-tune config (keys, transforms, distances, files) without running a model."""
    from .validation import check_files

    the_spec = _load_spec_file(spec)
    check_files(the_spec)
    if not quiet:
        n = len(the_spec.checks)
        out.print(
            f"[green]ok[/]: {spec} — {n} check{'s' * (n != 1)}, {the_spec.samples} samples, "
            f"input shape {list(the_spec.input.shape) or '(from data)'}",
            highlight=False,
        )


# -- transforms ---------------------------------------------------------------------------------
@app.command()
@handles_errors
def transforms(
    name: Annotated[Optional[str], typer.Argument(help="Document one transform.")] = None,
    check: Annotated[
        bool,
        typer.Option("--check", help="Verify identity, composition and inverses numerically (exit 1 on a failure)."),
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """List the transforms that specs can name, or document one."""
    from .transform_docs import describe_transform, transforms_table

    if check:
        _check_transforms(name)
        return
    if name is None:
        out.print(transforms_table())
    else:
        out.print(describe_transform(name))


def _check_transforms(name: Optional[str]) -> None:
    """``eqaudit transforms --check``: a table of the group laws per transform; exit 1 on a failure."""
    from rich.markup import escape
    from rich.table import Table

    import transforms_zoo
    from transforms_zoo.group import verify_transform

    names = [name] if name is not None else transforms_zoo.names()
    if name is not None:
        try:
            transforms_zoo.get(name)
        except transforms_zoo.TransformError as exc:
            raise EqauditError(exc.message, key=name, hint=exc.hint) from None
    table = Table(title="transform group laws (numerical check)")
    for col in ("transform", "group action", "law", "max error", "status"):
        table.add_column(col)
    failed = []
    for n in names:
        cls = transforms_zoo.get(n)
        action = "approximate" if getattr(cls, "approximate", False) else (
            "yes" if getattr(cls, "group_action", False) else "no")
        for i, (law, error, status) in enumerate(verify_transform(n)):
            color = {"ok": "green", "FAIL": "bold red"}.get(status, "dim")
            table.add_row(n if i == 0 else "", action if i == 0 else "", escape(law),
                          "" if error is None else f"{error:.2e}", f"[{color}]{status}[/]")
            if status == "FAIL":
                failed.append(f"{n}: {law}")
    out.print(table)
    if failed:
        err.print("[bold red]FAILED[/]: " + escape("; ".join(failed)))
        raise typer.Exit(1)


# -- sweep --------------------------------------------------------------------------------------
@app.command()
@handles_errors
def sweep(
    spec: Annotated[Path, typer.Option("--spec", "-s", help="The spec YAML.")] = ...,  # type: ignore[assignment]
    check: Annotated[str, typer.Option("--check", help="Name of the check to sweep.")] = ...,  # type: ignore[assignment]
    param: Annotated[str, typer.Option("--param", help="Parameter of the check's transform (e.g. degrees, dx).")] = ...,  # type: ignore[assignment]
    values: Annotated[str, typer.Option("--values", help="start:stop:step (inclusive) or a comma list.")] = ...,  # type: ignore[assignment]
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="Overrides model.checkpoint.")] = None,
    samples: Annotated[Optional[int], typer.Option(help="Monte Carlo sample size per value.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed (overrides the spec).")] = None,
    device: DeviceOpt = "auto",
    json_path: Annotated[Optional[str], typer.Option("--json", help="Write the curve as JSON ('-': stdout).")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write error versus parameter as a PNG (matplotlib).")] = None,
    trust_checkpoint: TrustOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Evaluate one check over a range of one transform parameter (error versus angle, shift...)."""
    import json

    from ..audit.sweep import parse_values, plot_sweep, run_sweep

    the_spec = _load_spec_file(spec)
    vals = parse_values(values)
    check_outputs({"--json": json_path, "--plot": plot}, run_inputs(spec, the_spec, checkpoint, "--checkpoint"))
    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise EqauditError("--plot needs matplotlib", key="--plot",
                               hint="pip install 'eqaudit[plot]' (or matplotlib)") from None
    result = run_sweep(None, the_spec, check, param, vals, samples=samples, seed=seed, device=device,
                       checkpoint=checkpoint, trust_checkpoint=trust_checkpoint)
    text = json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n"
    if json_path == "-":
        sys.stdout.write(text)
    elif json_path is not None:
        write_output(json_path, "--json", text)
    if plot is not None:
        try:
            plot_sweep(result, str(plot))
        except OSError as exc:
            raise output_error(plot, "--plot", exc) from None
    if not quiet and json_path != "-":
        from rich.table import Table

        conf = result.report.checks[0].confidence
        table = Table(title=f"eqaudit sweep — {check}: {result.transform}.{param}",
                      caption=f"{result.report.samples} samples per value · seed {result.report.seed} · "
                              f"device {result.report.device} · distance {result.distance}")
        for col in (param, "mean", f"{conf * 100:g}% CI", "std"):
            table.add_column(col, justify="right", no_wrap=True)
        from ..report import _g

        for p in result.points:
            table.add_row(str(p.value), _g(p.mean), f"[{_g(p.ci_low)}, {_g(p.ci_high)}]", _g(p.std))
        out.print(table)


# -- finetune (its options live beside the training loop) --------------------------------------
from .finetune import finetune_command  # noqa: E402  (no torch at import time)

app.command("finetune")(handles_errors(finetune_command))


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
