"""The audit run: ``audit(model, spec) -> Report``.

It prepares the model (device, eval mode, autocast, compile), chooses the chunk size, runs this
process's share of the chunk grid (:func:`eqaudit.engine.chunk.measure_chunk`, backing off on
out-of-memory), keeps sampling until a target half-width when asked, sums the statistics across
processes, and adds the extras (noise floor, inverse hints, per-layer rows) beside the estimates.
Asked to (``keep_samples``), it keeps every per-sample error on the report (:mod:`.kept`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from transforms_zoo import SampleRNG, fused_draws

from ..errors import ArgumentError, EqauditError
from ..report import Report
from ..spec import Spec, check_seed, load_spec
from . import chunk
from .chunking import (Probe, auto_batch_size, bounded_chunk, device_chunk, forward_rows, free_device_bytes, probe,
                       remembered_probe, round_up)
from .device import Autocast, model_dtype, resolve_device
from .distributed import World, current_world, least_across, merged_failures, reduce_stats
from .estimator import BLOCK, BlockStats, Summary
from .extras import FirstBlock, inverse_hints, noise_floors
from .grid import ChunkGrid, Progress
from .kept import keep_count, sample_errors
from .layers import LayerPlan
from .options import Precision, check_gate_confidence, check_run_options, check_samples, parse_precision
from .results import check_result, error_result, exceeds, max_finite, refuse_unusable, reported_summary, run_notes
from .sampling import PointSampler
from .tolerance import derive_thresholds

__all__ = ["audit", "resolve_device"]

def audit(
    model: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor] | None,
    spec: Spec | str | Path,
    *,
    samples: int | None = None,
    seed: int | None = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    confidence: float = 0.95,
    gate: str = "mean",
    progress: Progress | None = None,
    checkpoint: str | Path | None = None,
    trust_checkpoint: bool = False,
    precision: str | float | None = None,
    compile: bool = False,
    max_samples: int | None = None,
    noise_floor: bool = True,
    keep_samples: bool = False,
) -> Report:
    """Estimate every check of ``spec`` on ``model`` and return a :class:`Report`.

    ``model`` may be None to build it from the spec's ``model`` block (``checkpoint`` overrides
    ``model.checkpoint``). ``device=None`` keeps the model where it is; ``"auto"`` picks CUDA when
    present. ``batch_size`` is rounded up to a multiple of 64 (the statistics block); by default
    it is chosen from the input size and device. The model is evaluated in eval mode under
    ``torch.inference_mode()`` and its training flag is restored afterwards.

    ``precision`` (``bf16`` or ``fp16``) runs the model's forward passes under autocast; the
    distances and statistics stay in float64. ``compile=True`` wraps the model in
    ``torch.compile`` and, on a GPU, runs each draw's hash as one compiled kernel
    (:func:`transforms_zoo.fused_draws`: the same numbers, fewer kernel launches). Launched with
    ``torchrun``, each process takes every n-th chunk and the
    statistics are summed: the report equals the single-process one.

    ``precision`` may instead be a number EPS > 0 (or its text): sampling then continues along
    the same index sequence (sample i is still a function of (seed, i)) until every check's
    confidence half-width is at most EPS, or ``max_samples`` (default 16 x ``samples``) is
    reached; the report's ``samples`` is the count used. ``noise_floor`` measures each check's
    distance between two forward passes of the same 64 points (see :func:`noise_floors`).

    ``keep_samples=True`` keeps every check's per-sample errors, the very values folded into the
    estimates, on ``report.sample_errors`` (a :class:`eqaudit.report.compare.SampleErrors` with
    the digest of the drawn points; NaN lists for a check that could not be measured): the
    paired comparisons need them. It costs ``8 x samples`` bytes per statistics column; the
    report's figures are the same either way, and ``to_dict()`` leaves them out.

    A bad argument is an :class:`eqaudit.errors.ArgumentError` naming the parameter.
    """
    t0 = time.perf_counter()
    spec = _resolved_spec(spec, samples, seed)
    check_gate_confidence(gate, confidence)
    parsed = parse_precision(precision)
    check_run_options(batch_size, max_samples, parsed)
    if device is not None:
        resolve_device(device)  # refuse a bad device before loading anything
    target = _Target.build(model, spec, device, checkpoint, trust_checkpoint, compile, parsed)
    try:
        with torch.inference_mode(), _draws(compile, target.dev):
            measured = _measure(target, spec, batch_size, progress, parsed, max_samples, confidence, keep_samples)
            extras = _extras(target, measured, noise_floor, gate)
            kept = (sample_errors(measured.stats, measured.spec, measured.failed, measured.sampler, target.dev)
                    if keep_samples else None)
    finally:
        target.release()
    return dataclasses.replace(_report(target, measured, extras, confidence, gate, precision, t0), sample_errors=kept)


def _draws(compile: bool, dev: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Fused draws with ``compile`` where they pay: off the CPU, whose draws already run as
    numpy's integer loops and would only add the compiled calls' overhead (measured: 5-8% slower
    on the benchmark MLP's audit)."""
    return fused_draws() if compile and dev.type != "cpu" else contextlib.nullcontext()


def _resolved_spec(spec: Spec | str | Path, samples: int | None, seed: int | None) -> Spec:
    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    if samples is not None:
        spec = spec.replace(samples=check_samples(samples))
    if seed is not None:
        try:
            spec = spec.replace(seed=check_seed(seed))
        except EqauditError as exc:
            raise ArgumentError("seed", f"seed {exc.message}") from None
    return spec


@dataclass
class _Target:
    """The model as the run calls it, where it runs, and what to restore afterwards."""

    model: Any
    forward: Any  # the model, compiled and under autocast as asked
    dev: torch.device
    world: World
    is_module: bool
    was_training: bool
    checkpoint_label: str | None
    plan: LayerPlan | None = None

    @classmethod
    def build(cls, model: Any, spec: Spec, device: Any, checkpoint: Any, trust_checkpoint: bool, compile: bool,
              precision: Precision) -> _Target:
        label = None
        if model is None:
            path = Path(checkpoint) if checkpoint is not None else spec.model.checkpoint
            model = spec.build_model(checkpoint, trust_checkpoint=trust_checkpoint)
            label = _display_path(path) if path is not None else None
            if device is None:
                device = "auto"
            model.eval()  # freshly built: its training flag is only the constructor's default
        is_module = isinstance(model, torch.nn.Module)
        world = current_world(resolve_device(device, model if is_module else None))
        if world.size > 1 and str(device) == "auto" and torch.cuda.is_available():
            device = f"cuda:{world.local_rank % torch.cuda.device_count()}"
        dev = resolve_device(device, model if is_module else None)
        was_training = bool(is_module and model.training)
        if is_module:
            model.to(dev)
            model.eval()
        forward: Any = torch.compile(model) if compile else model
        if precision.autocast is not None:
            forward = Autocast(forward, dev, precision.autocast)
        return cls(model, forward, dev, world, is_module, was_training, label)

    @property
    def dtype(self) -> torch.dtype:
        return model_dtype(self.model) if self.is_module else torch.get_default_dtype()

    def release(self) -> None:
        """Remove the layer hooks and restore the model's training flag."""
        if self.plan is not None:
            self.plan.tap.remove()  # never leave hooks on the user's model
        if self.is_module and self.was_training:
            self.model.train(True)


@dataclass
class _Measured:
    spec: Spec  # with the sample count reached
    sampler: PointSampler
    stats: BlockStats
    summaries: list[Summary]  # of every statistics column, at the run's confidence
    chunk_size: int
    target_halfwidth: float | None
    failed: dict[int, str]  # the checks that could not be measured, with their error
    derived: dict[int, str]  # the checks whose threshold follows the output dtype, and how


def _measure(target: _Target, spec: Spec, batch_size: int | None, progress: Progress | None,
             precision: Precision, max_samples: int | None, confidence: float, keep_samples: bool) -> _Measured:
    """Run the chunk grid (then more samples until the target half-width, when given), keeping
    every per-sample value when asked."""
    sampler = PointSampler(spec, target.dev, target.dtype)
    defaulted = [j for j, c in enumerate(spec.checks) if c.threshold_source == "default"]
    spec, derived = derive_thresholds(target.forward, spec, sampler, target.dev, defaulted)
    measured = _probe(target, spec, sampler) if batch_size is None else None
    target.plan = plan = LayerPlan.build(target.model, spec, chunk.n_columns(spec))
    chunk_size, max_rows = _chunk_size(target, spec, sampler, batch_size, measured)
    eps = precision.target_halfwidth
    cap = max_samples if max_samples is not None else 16 * spec.samples
    most = max(cap, spec.samples) if eps is not None else spec.samples  # the samples the run may reach
    local = BlockStats(spec.samples, chunk.n_columns(spec) + (plan.n_columns if plan else 0), target.dev,
                       keep_values=keep_count(keep_samples, most))
    grid = ChunkGrid(target.forward, target.world, target.dev, target.plan, sampler, chunk_size,
                     batch_size is not None, progress, max_rows)
    # later rounds keep a size that fits every process (each backs off on its own out-of-memory)
    chunk_size = grid.chunk_size = least_across(grid.run(spec, local), target.world)
    grid.failed = merged_failures(grid.failed, target.world, grid.failed_at)
    stats = _reduced(local, target.world)
    summaries = stats.summaries(confidence)
    if eps is not None:
        while True:
            measuring = [reported_summary(spec, j, summaries[j]) for j in range(len(spec.checks))
                         if j not in grid.failed]
            n_next = _next_sample_count(measuring, eps, spec.samples, cap)
            if n_next is None:
                break
            begin = (spec.samples // BLOCK) * BLOCK  # a partial last block is redone whole
            local = local.grown(n_next)
            local.clear_from(begin)
            spec = spec.replace(samples=n_next)
            grid.run(spec, local, begin=begin)
            grid.failed = merged_failures(grid.failed, target.world, grid.failed_at)
            stats = _reduced(local, target.world)
            summaries = stats.summaries(confidence)
    if plan is not None:
        plan.tap.remove()
        plan.reduce(target.world)
    return _Measured(spec, sampler, stats, summaries, chunk_size, eps, grid.failed, derived)


def _probe(target: _Target, spec: Spec, sampler: PointSampler) -> Probe | None:
    """The model's layer sizes on one block of points, on the CPU when the automatic chunk size
    may be more than one block (may the model's layers want less?), on CUDA when the sample count
    is (how many samples fit the free device memory?)."""
    dev = target.dev
    if dev.type == "cuda":  # the device policy may pick any size up to the sample count
        size = round_up(spec.samples, BLOCK)
    else:
        size = auto_batch_size(max(1, math.prod(sampler.shape)), dev, spec.samples)
    if dev.type not in ("cpu", "cuda") or not target.is_module or size <= BLOCK:
        return None
    known = remembered_probe(target.model, sampler.shape, sampler.dtype, dev)
    if known is not None:  # a repeated audit of this model: no points to draw
        return known
    with torch.inference_mode():
        return probe(target.model, sampler.draw(SampleRNG.for_range(spec.seed, 0, BLOCK, dev)))


def _chunk_size(target: _Target, spec: Spec, sampler: PointSampler, batch_size: int | None,
                measured: Probe | None) -> tuple[int, int | None]:
    """Samples per chunk, and rows per model call (None: a whole chunk or fused group per call)."""
    dev = target.dev
    sample_numel = max(1, math.prod(sampler.shape))
    if batch_size is not None:
        return round_up(int(batch_size), BLOCK), None
    size = auto_batch_size(sample_numel, dev, spec.samples)
    max_rows = None
    copies = chunk.copies_per_sample(spec)
    if measured is not None:
        if target.plan is None:
            max_rows = forward_rows(measured.layer, dev)
        else:  # the layer taps record each check's rows in one call: bound the chunk instead
            size = auto_batch_size(sample_numel, dev, spec.samples, layer_bytes=measured.layer, copies=copies)
    if measured is not None and dev.type == "cuda":  # every process must cut the same chunk grid,
        free = least_across(free_device_bytes(dev), target.world)  # and join the gather: even one
        if free is not None:  # whose driver could not say how much memory is free
            size = device_chunk(free, measured.device_bytes(), spec.samples, copies)
    held = measured.held(copies) if measured is not None else None
    return bounded_chunk(size, dev, held, target.world.size, spec.samples), max_rows


def _next_sample_count(summaries: list[Summary], target: float, n: int, cap: int) -> int | None:
    """The next sample count of sequential sampling, or None to stop (every half-width <= target,
    or the cap reached). Grows by the predicted factor (half-width ~ 1/sqrt(n)) with a margin, at
    least one block and at most 8x per round."""
    if n >= cap:
        return None
    worst = 0.0
    for s in summaries:
        if s.n == 0:
            continue
        half = s.half_width if math.isfinite(s.half_width) else math.inf
        worst = max(worst, half / target)
    if worst <= 1.0:
        return None
    want = n * min(64.0, worst * worst * 1.1) if math.isfinite(worst) else 8 * n
    want = min(max(want, n + BLOCK), 8 * n)
    return int(min(cap, round_up(math.ceil(want), BLOCK)))


def _reduced(local: BlockStats, world: World) -> BlockStats:
    """The statistics of every process (``local`` itself in a single process)."""
    if world.size == 1:
        return local
    total = local.grown(local.n_samples)
    reduce_stats(total, world)
    return total


@dataclass
class _Extras:
    floors: list[float] | None
    hints: dict[int, str]


def _extras(target: _Target, measured: _Measured, noise_floor: bool, gate: str) -> _Extras:
    """Beside the summaries: the noise floors and the inverse-output hints."""
    spec = measured.spec
    block = FirstBlock(target.forward, spec, measured.sampler, target.dev)  # drawn and forwarded once for both
    floors = noise_floors(block) if noise_floor else None
    failing = [j not in measured.failed and exceeds(reported_summary(spec, j, s), gate, c.threshold)
               for j, (c, s) in enumerate(zip(spec.checks, measured.summaries))]  # as the report judges
    return _Extras(floors, inverse_hints(block, failing))


def _report(target: _Target, measured: _Measured, extras: _Extras, confidence: float, gate: str,
            precision: str | float | None, t0: float) -> Report:
    spec, summaries, floors, plan = measured.spec, measured.summaries, extras.floors, target.plan
    results = []
    for j, s in enumerate(summaries[: len(spec.checks)]):
        if j in measured.failed:
            results.append(error_result(spec, j, measured.failed[j], confidence=confidence, gate=gate))
            continue
        refuse_unusable(spec, j, s)
        results.append(check_result(
            spec, j, s, summaries, gate=gate,
            noise_floor=floors[j] if floors is not None else math.nan, hint=extras.hints.get(j),
            layers=plan.results(j, summaries) if plan is not None else None))
    notes = list(plan.notes()) if plan is not None else []
    autocast = parse_precision(precision).autocast is not None
    notes += run_notes(spec, results, world_size=target.world.size, precision_text=str(precision) if autocast else None,
                       target=measured.target_halfwidth, hints=extras.hints, was_training=target.was_training)
    notes += [f"check '{spec.checks[j].name}': {how}" for j, how in sorted(measured.derived.items())]
    return Report(
        checks=tuple(results),
        spec=spec.file,
        checkpoint=target.checkpoint_label,
        device=str(target.dev),
        seed=spec.seed,
        samples=spec.samples,
        elapsed_s=time.perf_counter() - t0,
        gate=gate,
        batch_size=measured.chunk_size,
        model_was_training=target.was_training,
        notes=tuple(notes),
        noise_floor=max_finite(floors),
        sampling=spec.input.sampling,
        target_halfwidth=measured.target_halfwidth,
    )


def _display_path(path: Path) -> str:
    """The path relative to the working directory when it lies below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
