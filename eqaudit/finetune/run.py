"""The fine-tune run: check the outputs, build the model and the trainer, audit before, train
(saving resumable states), audit after, and write the model and the report."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ArgumentError, EqauditError, first_line
from ..io.atomic import atomic_write
from ..report import Report
from ..spec import check_seed
from .config import FinetuneConfig
from .board import BoardWriter, require_tensorboard
from .curve import Curve
from .data import Examples, load_data, sample_shape
from .inputs import check_same_inputs, input_digests, input_files
from .interrupt import FinetuneInterrupted, SigintFlag
from .landscape import compute_dynamics, dynamics_point
from .losses import evaluate
from .sections import DynamicsConfig
from .state import (
    STATE_FORMAT,
    STATE_VERSION,
    load_state,
    remove_stale_temps,
    resume_error,
    save_model_safetensors,
    save_state,
    state_error,
)
from .summary import FinetuneResult, RunFacts, audit_spec, build_report
from .trainer import Trainer

Callback = Callable[[str, Mapping[str, Any]], None]


def _emit(callback: Callback | None, event: str, **data: Any) -> None:
    if callback is not None:
        callback(event, data)


def check_outputs(cfg: FinetuneConfig, *, resume: bool, force: bool,
                  other_outputs: Mapping[str, str | Path | None] | None = None) -> None:
    """Before the run: every output writable, none the same file as an input of the run (the
    config, data, checkpoint, user code) or as another output (``other_outputs``: the caller's
    own, e.g. ``{"--json": path}``), even with ``force``; and an earlier run's outputs (or its
    resumable state) not overwritten without ``force``."""
    from ..io.outputs import check_distinct, check_output

    output = cfg.output
    outputs = {"output.checkpoint": output.checkpoint, "output.report": output.report, "output.state": output.state}
    for key, path in outputs.items():
        try:
            check_output(path, key)  # writable, before the run rather than after it
        except EqauditError as exc:
            raise cfg.error(key, exc.message, exc.hint) from None
    try:
        check_distinct({**outputs, **(other_outputs or {})}, input_files(cfg))
    except EqauditError as exc:
        raise cfg.error(exc.key, exc.message, exc.hint) from None
    if force or resume:
        return
    for key in ("output.checkpoint", "output.report"):
        if outputs[key].exists():
            raise cfg.error(key, f"'{outputs[key]}' exists; refusing to overwrite it",
                            "pass --force to overwrite, or --resume to continue that run")
    if output.state.exists():
        raise cfg.error("output.state", f"a resumable state of an unfinished run exists at '{output.state}'",
                        "pass --resume to continue it, or --force to start over")


def run_finetune(
    cfg: FinetuneConfig,
    *,
    resume: bool = False,
    force: bool = False,
    device: str | None = None,
    dynamics: bool | None = None,
    steps: int | None = None,
    seed: int | None = None,
    trust_checkpoint: bool = False,
    model: Any = None,
    callback: Callback | None = None,
    handle_sigint: bool = True,
    other_outputs: Mapping[str, str | Path | None] | None = None,
    tensorboard: str | Path | None = None,
) -> FinetuneResult:
    """Fine-tune, audit before and after, write the model, the state and the JSON report.

    ``device``, ``dynamics``, ``steps`` and ``seed`` override the config. ``model`` skips loading
    from the spec's ``model`` block. ``callback(event, data)`` receives ``start``, ``audit``
    (phase before/after), ``step``, ``log`` (a learning-curve point), ``checkpoint``,
    ``dynamics`` and ``done``. Ctrl-C (SIGINT, main thread) saves the state after the current
    step and raises :class:`FinetuneInterrupted`. ``other_outputs`` (key -> path) are files the
    caller will write (``{"--json": path}``): refused, like the run's own outputs, when one is an
    input of the run or another output. ``tensorboard`` (a folder) receives the learning curve,
    penalties, per-check errors and dynamics as TensorBoard scalars. Every user error is an
    :class:`EqauditError`.
    """
    import torch

    started = time.perf_counter()
    if steps is not None:
        if steps < 1:
            raise ArgumentError("steps", f"must be >= 1, got {steps}")
        cfg = cfg.replace(steps=int(steps), epochs=None)
    if seed is not None:
        cfg = cfg.replace(spec=cfg.spec.replace(seed=check_seed(seed)))
    dynamics_options = cfg.dynamics if dynamics is None else dataclasses.replace(cfg.dynamics, enabled=bool(dynamics))
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    board = None
    try:
        if tensorboard is not None:
            require_tensorboard(tensorboard)
        check_outputs(cfg, resume=resume, force=force, other_outputs=other_outputs)
        session = _open(cfg, device, trust_checkpoint, model)
        if tensorboard is not None and session.main:
            board = BoardWriter(tensorboard)
            callback = board.wrap(callback)
        with torch.random.fork_rng(devices=session.cuda_devices):
            progress = _resume(session) if resume else _audit_before(session, callback)
            _train(session, progress, callback, handle_sigint, resumed=resume, dynamics=dynamics_options)
        result = _finish(session, progress, dynamics_options, callback, started)
        if board is not None:
            board.audits(result.before, result.after, result.steps)
        return result
    finally:
        if board is not None:
            board.close()
        if cfg.threads:
            torch.set_num_threads(threads)


@dataclass
class _Session:
    """What a run works with: the config, the device, the processes, the data, model and trainer."""

    cfg: FinetuneConfig
    device: Any
    world: Any
    train: Examples
    val: Examples | None
    model: Any
    trainer: Trainer
    #: sha256 of every file the update reads, by key (saved in the state, checked on resume)
    inputs: dict[str, str]

    @property
    def main(self) -> bool:
        """Under torchrun only rank 0 writes files."""
        return bool(self.world.is_main)

    @property
    def cuda_devices(self) -> list[Any]:
        return [self.device] if self.device.type == "cuda" else []

    @property
    def metrics_split(self) -> Examples:
        return self.val if self.val is not None else self.train


@dataclass
class _Progress:
    """What the training loop carries forward and the resumable state saves."""

    before: Any  # the Report of the audit before training
    metrics_before: dict[str, Any]
    curve: Curve
    train_elapsed: float = 0.0
    resumed_from: int | None = None


def _resolve_device(cfg: FinetuneConfig, device: str | None) -> tuple[Any, Any]:
    """``--device`` if given, else the config's ``device``; under torchrun, this process's GPU."""
    import torch

    from ..engine.distributed import current_world
    from ..engine.run import resolve_device

    if device is not None:
        resolved = resolve_device(device)
    else:
        try:
            resolved = resolve_device(cfg.device)
        except EqauditError as exc:
            raise cfg.error("device", exc.message, exc.hint) from None
    world = current_world(resolved)
    if world.size > 1 and resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", world.local_rank % torch.cuda.device_count())
    return resolved, world


def _open(cfg: FinetuneConfig, device: str | None, trust_checkpoint: bool, model: Any) -> _Session:
    """Resolve the device, load the data, build the model (rank 0's weights everywhere) and the trainer."""
    import torch

    resolved, world = _resolve_device(cfg, device)
    if world.is_main:
        remove_stale_temps([cfg.output.checkpoint, cfg.output.report, cfg.output.state])
    inputs = input_digests(cfg)  # before reading them: what this run's updates depend on
    train, val = load_data(cfg)
    if model is None:  # a factory-built model starts from weights seeded by the spec's seed
        model = cfg.spec.build_model(trust_checkpoint=trust_checkpoint)
    if not isinstance(model, torch.nn.Module):
        raise cfg.error("model", f"fine-tuning needs a torch.nn.Module, got {type(model).__name__}")
    model.to(resolved)
    if world.size > 1:  # every process starts from rank 0's weights
        import torch.distributed as dist

        with torch.no_grad():
            for tensor in list(model.parameters()) + list(model.buffers()):
                dist.broadcast(tensor.data, src=0)
    trainer = Trainer(cfg, model, train, resolved, world=world)
    if cfg.spec.input.shape and cfg.regularizer.points != "random":
        shape = sample_shape(train)
        if shape != tuple(cfg.spec.input.shape):
            key = "data.dataset" if cfg.data.dataset else "data.inputs"
            raise cfg.error(key, f"training samples have shape {list(shape)}, input.shape says "
                            f"{list(cfg.spec.input.shape)}", "the penalty uses the training batch (regularizer.points)")
    return _Session(cfg, resolved, world, train, val, model, trainer, inputs)


def _audit_before(session: _Session, callback: Callback | None) -> _Progress:
    """The audit and the metrics before training; then torch's generator seeded for dropout."""
    import torch

    from ..engine.run import audit

    _emit(callback, "audit", phase="before")
    session.model.eval()
    before = audit(session.model, audit_spec(session.cfg), device=session.device)
    metrics = evaluate(session.model, session.metrics_split, session.cfg, session.device, session.trainer.dtype)
    torch.manual_seed(session.cfg.spec.seed)
    return _Progress(before, metrics, Curve(session.cfg.log_every))


def _resume(session: _Session) -> _Progress:
    """The progress saved in the resumable state, restored into the trainer and torch's generators."""
    import torch

    cfg, trainer, path = session.cfg, session.trainer, session.cfg.output.state
    state = load_state(cfg, path, session.device)
    check_same_inputs(cfg, state["inputs"], session.inputs, path)
    if int(state["step"]) > trainer.total_steps:
        raise resume_error(cfg, f"the saved state is at step {state['step']}, past the {trainer.total_steps} "
                           "steps configured", "raise steps, or run with --force to start over")
    curve = Curve(cfg.log_every)
    try:
        before = Report.from_dict(state["before"])
        curve.load(state["curve"])
        trainer.load_state_dict(state)
        torch.set_rng_state(state["rng"]["cpu"].cpu())
        if session.cuda_devices and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), session.device)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise state_error(path, None, f"cannot be restored: {first_line(exc)}") from None
    return _Progress(before, dict(state["metrics_before"]), curve, float(state["train_elapsed_s"]), trainer.step_idx)


def _snapshot(session: _Session, progress: _Progress, train_elapsed: float) -> dict[str, Any]:
    """The resumable state after the trainer's current step."""
    import torch

    cuda = session.cuda_devices
    return {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "fingerprint": session.cfg.fingerprint,
        "seed": session.cfg.spec.seed,
        "total_steps": session.trainer.total_steps,
        **session.trainer.state_dict(),
        "rng": {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(session.device) if cuda else None},
        "curve": progress.curve.state(),
        "before": progress.before.to_dict(),
        "metrics_before": progress.metrics_before,
        "train_elapsed_s": train_elapsed,
        "inputs": session.inputs,
    }


def _train(session: _Session, progress: _Progress, callback: Callback | None, handle_sigint: bool,
           *, resumed: bool, dynamics: DynamicsConfig) -> None:
    """Step to the end; save the state every ``checkpoint_every`` steps, on Ctrl-C and at the end;
    a point of the dynamics series every ``dynamics.every`` steps (before the state is saved)."""
    cfg, trainer, state_path = session.cfg, session.trainer, session.cfg.output.state
    total = trainer.total_steps
    _emit(callback, "start", step=trainer.step_idx, total=total, resumed=resumed, state=str(state_path),
          steps_per_epoch=trainer.steps_per_epoch, batch_size=trainer.batch_size)
    train_started = time.perf_counter()

    def save() -> None:
        if session.main:
            elapsed = progress.train_elapsed + (time.perf_counter() - train_started)
            save_state(state_path, _snapshot(session, progress, elapsed))

    with SigintFlag(handle_sigint) as sigint:
        while trainer.step_idx < total:
            result = trainer.step()
            point = progress.curve.add(result, total)
            _emit(callback, "step", step=result.step, total=total, epoch=result.epoch, task_loss=result.task_loss,
                  penalty=result.penalty, errors=result.errors)
            if point is not None:
                _emit(callback, "log", **point)
            if dynamics.every and result.step % dynamics.every == 0:
                figures = dynamics_point(cfg, dynamics, session.model, session.train, session.device,
                                         trainer.dtype, result.step)
                progress.curve.dynamics.append(figures)
                _emit(callback, "dynamics_point", **figures)
            if sigint.hit:
                save()
                raise FinetuneInterrupted(result.step, total, state_path)
            periodic = cfg.checkpoint_every and result.step % cfg.checkpoint_every == 0
            if periodic and result.step < total and session.main:
                save()
                _emit(callback, "checkpoint", step=result.step, path=str(state_path))
    save()
    progress.train_elapsed += time.perf_counter() - train_started


def _finish(session: _Session, progress: _Progress, dynamics_options: DynamicsConfig, callback: Callback | None,
            started: float) -> FinetuneResult:
    """The audit and metrics after training, the dynamics, the report; the model and report written."""
    from ..engine.run import audit

    cfg, model, trainer = session.cfg, session.model, session.trainer
    _emit(callback, "audit", phase="after")
    model.eval()
    after = audit(model, audit_spec(cfg), device=session.device)
    metrics_after = evaluate(model, session.metrics_split, cfg, session.device, trainer.dtype)
    dynamics = None
    if dynamics_options.enabled:
        _emit(callback, "dynamics")
        dynamics = compute_dynamics(cfg, dynamics_options, model, session.train, session.device, trainer.dtype)
    facts = RunFacts(trainer.total_steps, trainer.steps_per_epoch, trainer.batch_size, trainer.samples,
                     trainer.penalized, progress.resumed_from, str(session.device),
                     time.perf_counter() - started, progress.train_elapsed)
    report = build_report(cfg, progress.before, after, progress.metrics_before, metrics_after,
                          progress.curve.points, dynamics, facts, progress.curve.dynamics)
    if session.world.size > 1:
        report["processes"] = session.world.size
    if session.main:
        _write_outputs(session, report)
    if trainer.layers is not None:
        trainer.layers.tap.remove()  # the caller's model keeps no hooks of ours
    _emit(callback, "done", exit_code=after.exit_code)
    return FinetuneResult(progress.before, after, progress.metrics_before, metrics_after, progress.curve.points,
                          dynamics, report, cfg.output, trainer.total_steps, progress.resumed_from)


def _write_outputs(session: _Session, report: dict[str, Any]) -> None:
    """The fine-tuned model (safetensors) and the JSON report, each written atomically."""
    cfg = session.cfg
    save_model_safetensors(session.model, cfg.output.checkpoint, {
        "format": "pt", "eqaudit": "finetune", "steps": str(session.trainer.total_steps),
        "seed": str(cfg.spec.seed), "config": str(cfg.file or ""),
    })
    atomic_write(cfg.output.report, lambda tmp: Path(tmp).write_text(
        json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8"))
