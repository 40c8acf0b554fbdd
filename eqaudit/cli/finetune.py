"""The ``eqaudit finetune`` command: parsing and printing around :mod:`eqaudit.finetune`.

No torch at import time (``eqaudit --help`` stays instant); the library is imported on use.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .errors import handles_errors
from .options import DebugOpt, QuietOpt, SeedOpt, TrustOpt
from .output import check_inputs, emit, err, escape, out
from ..io.outputs import check_output
from ..errors import EqauditError


@handles_errors()
def finetune_command(
    config: Annotated[Path, typer.Argument(help="The fine-tune config YAML (a spec plus training keys).")],
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run whose state file sits next to the output.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the outputs (and state) of an earlier run.")] = False,
    device: Annotated[
        Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:K (overrides the config).")
    ] = None,
    dynamics: Annotated[
        bool,
        typer.Option("--dynamics", help="Also compute the sharpness phi and the top Hessian eigenvalue (extra passes)."),
    ] = False,
    json_path: Annotated[
        Optional[str], typer.Option("--json", help="Also write the JSON report here ('-': stdout, no tables).")
    ] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Optimizer steps (overrides steps/epochs).")] = None,
    tensorboard: Annotated[
        Optional[Path],
        typer.Option("--tensorboard", help="Also write the learning curve, per-check errors and penalties as "
                     "TensorBoard scalars into this folder (extra: tensorboard)."),
    ] = None,
    seed: SeedOpt = None,
    trust_checkpoint: TrustOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Fine-tune a model with the equivariance penalty added to its task loss.

    Audits before and after (same engine and seed as `measure`); writes the fine-tuned state dict (safetensors), a JSON report and a resumable state.

    Exit code: the final audit's gate (0 / 1); 2 when it could not run; 130 when interrupted (continue with --resume).
    """
    from ..finetune import FinetuneInterrupted, input_files, load_config, run_finetune

    if resume and force:
        raise EqauditError("--resume and --force exclude each other", key="--force",
                           hint="--resume continues a run, --force starts it over")
    cfg = load_config(config)
    check_inputs(cfg.spec, input_files(cfg))
    json_file = None if json_path in (None, "-") else json_path
    check_output(json_file, "--json")  # before the run, which may be long; run_finetune compares it with the inputs
    from ..engine.distributed import launched_by_torchrun

    if launched_by_torchrun() and os.environ.get("RANK", "0") != "0":
        quiet, json_path = True, None  # rank 0 speaks for the run
    view = _View(err, show=not quiet, terminal=err.is_terminal)
    try:
        with view:
            result = run_finetune(cfg, resume=resume, force=force, device=device, dynamics=True if dynamics else None,
                                  steps=steps, seed=seed, trust_checkpoint=trust_checkpoint, callback=view.event,
                                  other_outputs={"--json": json_file}, tensorboard=tensorboard)
    except FinetuneInterrupted as exc:
        again = f"eqaudit finetune {shlex.quote(str(config))} --resume"
        err.print(f"[bold yellow]interrupted[/] at step {exc.step}/{exc.total}; resumable state saved to "
                  f"{escape(str(exc.state))}\ncontinue with: {escape(again)}", highlight=False)
        raise typer.Exit(130) from None
    emit(json_path, "--json", json.dumps(result.report, indent=2, allow_nan=False) + "\n")
    if not quiet and json_path != "-":
        _print_result(result)
    raise typer.Exit(result.exit_code)


def _print_result(result: Any) -> None:
    """The before/after tables, the metrics and where the outputs went."""
    before, after = result.before, result.after
    for report, title in ((before, "before fine-tuning"), (after, "after fine-tuning")):
        table = _table(report, out.width)
        table.title = title + (f" — {report.spec}" if report.spec else "")
        out.print(table)
    out.print(_metrics_table(result))
    paths = result.paths
    out.print(f"model: {escape(str(paths.checkpoint))}\nreport: {escape(str(paths.report))}\n"
              f"resumable state: {escape(str(paths.state))}", highlight=False)
    if not after.passed:
        from ..report.render import exceeded

        failed = exceeded([c.name for c in after.checks if not c.passed])
        err.print(f"[bold red]FAILED[/]: {escape(failed)} after fine-tuning")


def _table(report: Any, width: int) -> Any:
    try:
        return report.rich_table(width)  # compact below ~110 columns
    except TypeError:
        return report.rich_table()


def _g(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        if x == 0:
            return "0"
        return f"{x:.4g}" if 1e-3 <= abs(x) < 1e5 else f"{x:.3e}"
    return str(x)


def _metrics_table(result: Any) -> Any:
    from rich.table import Table

    mb, ma = result.metrics_before, result.metrics_after
    table = Table(title="task metrics and penalty", caption=f"{result.steps} steps"
                  + (f" (resumed at step {result.resumed_from})" if result.resumed_from is not None else ""))
    for col, just in [("metric", "left"), ("before", "right"), ("after", "right")]:
        table.add_column(col, justify=just)
    table.add_row(f"{mb['split']} loss", _g(mb["loss"]), _g(ma["loss"]))
    if mb.get("accuracy") is not None:
        table.add_row(f"{mb['split']} accuracy", f"{mb['accuracy']:.2%}", f"{ma['accuracy']:.2%}")
    for b, a in zip(result.before.checks, result.after.checks):
        table.add_row(f"{b.name} error", _g(b.mean), _g(a.mean))
    table.add_row("total penalty", _g(sum(c.penalty for c in result.before.checks)),
                  _g(sum(c.penalty for c in result.after.checks)))
    dyn = result.dynamics
    if dyn:
        sh = dyn.get("sharpness") or {}
        if "phi" in sh:
            ts = ", ".join(f"{t:g}" for t in sh["displacements"])
            table.add_row(f"sharpness phi (t = {ts}; {sh['directions']} dirs)", "", _g(sh["phi"]))
        he = dyn.get("hessian") or {}
        if he.get("eigenvalue") is not None:
            table.add_row(f"top Hessian eigenvalue ({he['iterations']} HVPs)", "", _g(he["eigenvalue"]))
        elif "error" in he:
            table.add_row("top Hessian eigenvalue", "", "unavailable")
    return table


class _View:
    """Turns the library's events into a Rich progress bar (terminal) or sparse log lines (CI)."""

    def __init__(self, console: Any, *, show: bool, terminal: bool) -> None:
        self.console = console
        self.show = show
        self.terminal = terminal
        self.progress: Any = None
        self.task: Any = None
        self.next_line = 0
        self.total = 0
        self.last_penalty: tuple[float, dict[str, float]] | None = None

    def __enter__(self) -> _View:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop()

    def _stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def event(self, name: str, data: Mapping[str, Any]) -> None:
        if not self.show:
            return
        if name == "audit":
            self._stop()
            self.console.print(f"[dim]auditing ({data.get('phase')})…[/]", highlight=False)
        elif name == "start":
            self.total = int(data["total"])
            step = int(data["step"])
            if data.get("resumed"):
                self.console.print(
                    f"resuming from step {step}/{self.total} (state: {escape(str(data['state']))})", highlight=False)
            self.console.print(
                f"[dim]fine-tuning: {self.total} steps, batch {data['batch_size']}, "
                f"{data['steps_per_epoch']} steps per epoch[/]", highlight=False)
            self.next_line = step + max(1, self.total // 10)
            if self.terminal:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

                self.progress = Progress(
                    TextColumn("[bold]fine-tuning"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                    TimeRemainingColumn(), console=self.console, transient=False)
                self.task = self.progress.add_task("finetune", total=self.total, completed=step, info="")
                self.progress.start()
        elif name == "step":
            if data.get("penalty") is not None:
                self.last_penalty = (data["penalty"], dict(data.get("errors") or {}))
            info = _step_info(data["task_loss"], self.last_penalty)
            if self.progress is not None:
                self.progress.update(self.task, completed=int(data["step"]), info=info)
            elif int(data["step"]) >= self.next_line or int(data["step"]) == self.total:
                self.console.print(f"step {data['step']}/{self.total}  {info}", highlight=False, markup=False)
                self.next_line = int(data["step"]) + max(1, self.total // 10)
        elif name == "dynamics":
            self._stop()
            self.console.print("[dim]training dynamics: sharpness, Hessian eigenvalue…[/]", highlight=False)


def _step_info(task_loss: float, penalty: tuple[float, dict[str, float]] | None) -> str:
    """Task loss, and the latest penalty with its per-check errors."""
    parts = [f"loss {task_loss:.4g}"]
    if penalty is not None:
        parts.append(f"penalty {penalty[0]:.4g}")
        parts += [f"{k} {v:.3g}" for k, v in penalty[1].items()]
    return "  ".join(parts)
