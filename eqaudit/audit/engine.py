"""The audit engine: batched Monte Carlo estimates of every check's equivariance error.

For each chunk of sample indices: draw the points, compute ``y = model(x)`` once for all checks;
for each check draw its parameters once per sample, compare ``f_out(y)`` with
``model(f_in(x))`` and fold the per-sample distances into the block statistics
(:mod:`eqaudit.audit.estimator`). Sample ``i``'s points and parameters depend only on ``(seed, i)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from transforms_zoo import SampleRNG, TransformError

from .chunking import Probe, auto_batch_size, bounded_chunk, forward_rows, probe, round_up
from .distances import Distance
from ..errors import EqauditError, first_line
from .distributed import World, current_world, reduce_stats
from .estimator import BLOCK, BlockStats
from ..report import GATES, CheckResult, Report
from ..spec import MAX_SAMPLES, InputSpec, Spec, check_seed, load_spec

Progress = Callable[[int, int], None]

def resolve_device(device: str | torch.device | None, model: torch.nn.Module | None = None) -> torch.device:
    """``auto`` picks CUDA when present; None keeps the model's own device."""
    if device is None:
        if model is not None:
            for t in list(model.parameters()) + list(model.buffers()):
                return t.device
        return torch.device("cpu")
    text = str(device)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise EqauditError(f"unknown device '{text}'", key="--device", hint="use auto, cpu, cuda or cuda:K") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise EqauditError(f"device '{text}' requested but CUDA is not available", key="--device",
                               hint="use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise EqauditError(f"device '{text}' does not exist ({torch.cuda.device_count()} CUDA devices)",
                               key="--device")
    elif dev.type not in ("cpu", "mps", "xpu"):
        raise EqauditError(f"unsupported device '{text}'", key="--device", hint="use auto, cpu, cuda or cuda:K")
    elif dev.type != "cpu":
        backend = getattr(torch.backends, dev.type, None) if dev.type == "mps" else getattr(torch, dev.type, None)
        if backend is None or not backend.is_available():
            raise EqauditError(f"device '{text}' requested but this PyTorch build or machine has no {dev.type}",
                               key="--device", hint="use --device cpu or auto")
    return dev


def _dtype_of(model: torch.nn.Module) -> torch.dtype:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


class PointSampler:
    """Draws model inputs for a range of sample indices: a uniform box or rows of a data tensor."""

    def __init__(self, spec: Spec, device: torch.device, dtype: torch.dtype) -> None:
        inp: InputSpec = spec.input
        self.dtype = getattr(torch, inp.dtype) if inp.dtype else dtype
        self.data: torch.Tensor | None = None
        self.sequential = inp.sampling == "sequential"
        if inp.data is not None:
            self.data = _load_data(spec).to(device=device, dtype=self.dtype)
            self.shape = tuple(self.data.shape[1:])
            if inp.shape and tuple(inp.shape) != self.shape:
                raise spec.error(
                    "input.shape",
                    f"data '{inp.data.key}' holds samples of shape {list(self.shape)}, the spec says {list(inp.shape)}",
                    "fix input.shape or drop it to use the data's shape",
                )
        else:
            self.shape = tuple(inp.shape)
            b = torch.tensor(inp.bounds, dtype=torch.float64)
            try:
                b = torch.broadcast_to(b, self.shape + (2,))
            except RuntimeError:
                raise spec.error(
                    "input.bounds",
                    f"bounds of shape {list(b.shape[:-1])} + [lo, hi] do not broadcast to input.shape {list(self.shape)}",
                ) from None
            self.lo = b[..., 0].to(device=device, dtype=self.dtype)
            self.span = (b[..., 1] - b[..., 0]).to(device=device, dtype=self.dtype)
        self.sobol = inp.sampling == "sobol"
        self.seed = spec.seed
        self._engine: Any = None
        self._next = -1  # the Sobol index the cached engine draws next

    def _sobol(self, rng: SampleRNG) -> torch.Tensor:
        """Points ``start .. start + n - 1`` of the scrambled Sobol sequence of ``seed``: point i is
        the i-th Sobol point, whatever the chunking (``fast_forward`` to each chunk's start)."""
        start, n = int(rng.index[0]) if rng.n else 0, rng.n
        if rng.n and int(rng.index[-1]) != start + n - 1:
            raise ValueError("Sobol points are drawn for contiguous index ranges")
        dim = max(1, math.prod(self.shape))
        if self._engine is None or self._next != start:
            self._engine = torch.quasirandom.SobolEngine(dim, scramble=True, seed=self.seed)
            if start:
                self._engine.fast_forward(start)
        u = self._engine.draw(n, dtype=torch.float64)
        self._next = start + n
        u = u.reshape(n, *self.shape).to(device=rng.device, dtype=self.dtype)
        return self.lo + self.span * u

    def draw(self, rng: SampleRNG) -> torch.Tensor:
        if self.sobol:
            return self._sobol(rng)
        stream = rng.child("points")
        if self.data is not None:
            n_rows = self.data.shape[0]
            if self.sequential:
                idx = rng.index % n_rows
            else:
                idx = stream.integers(0, n_rows)
            return self.data[idx]
        u = stream.uniform(*self.shape, dtype=self.dtype)
        return u.mul_(self.span).add_(self.lo)  # lo + span * u, in place


def _load_data(spec: Spec) -> torch.Tensor:
    ref = spec.input.data
    assert ref is not None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(ref.path), framework="pt") as fh:
            keys = list(fh.keys())
            if ref.key not in keys:
                from ..errors import did_you_mean

                raise spec.error(
                    "input.data",
                    f"no tensor '{ref.key}' in {ref.path.name}",
                    did_you_mean(ref.key, keys) or ("keys: " + ", ".join(keys[:10])),
                )
            data = fh.get_tensor(ref.key)
    except (SafetensorError, OSError) as exc:
        raise spec.error("input.data", f"cannot read '{ref.path}' as safetensors: {exc}") from None
    if data.dim() < 1 or data.shape[0] == 0:
        raise spec.error("input.data", f"tensor '{ref.key}' has no rows (shape {list(data.shape)})")
    if not data.is_floating_point():
        data = data.to(torch.float32)
    return data


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
) -> Report:
    """Estimate every check of ``spec`` on ``model`` and return a :class:`Report`.

    ``model`` may be None to build it from the spec's ``model`` block (``checkpoint`` overrides
    ``model.checkpoint``). ``device=None`` keeps the model where it is; ``"auto"`` picks CUDA when
    present. ``batch_size`` is rounded up to a multiple of 64 (the statistics block); by default
    it is chosen from the input size and device. The model is evaluated in eval mode under
    ``torch.inference_mode()`` and its training flag is restored afterwards.

    ``precision`` (``bf16`` or ``fp16``) runs the model's forward passes under autocast; the
    distances and statistics stay in float64. ``compile=True`` wraps the model in
    ``torch.compile``. Launched with ``torchrun``, each process takes every n-th chunk and the
    statistics are summed: the report equals the single-process one.

    ``precision`` may instead be a number EPS > 0 (or its text): sampling then continues along
    the same index sequence (sample i is still a function of (seed, i)) until every check's
    confidence half-width is at most EPS, or ``max_samples`` (default 16 x ``samples``) is
    reached; the report's ``samples`` is the count used. ``noise_floor`` measures each check's
    distance between two forward passes of the same 64 points (see :func:`noise_floors`).
    """
    t0 = time.perf_counter()
    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    if samples is not None:
        if samples < 1:
            raise EqauditError(f"--samples must be >= 1, got {samples}", key="--samples")
        if samples > MAX_SAMPLES:
            raise EqauditError(f"--samples {samples} is too large (at most {MAX_SAMPLES})", key="--samples")
        spec = spec.replace(samples=int(samples))
    if seed is not None:
        spec = spec.replace(seed=check_seed(seed))
    if gate not in GATES:
        raise EqauditError(f"unknown gate '{gate}'", key="--gate", hint="use mean or upper")
    if not 0.0 < confidence < 1.0:
        raise EqauditError(f"confidence must lie in (0, 1), got {confidence}", key="--confidence")
    if batch_size is not None and batch_size < 1:
        raise EqauditError(f"--batch-size must be >= 1, got {batch_size}", key="--batch-size")
    autocast_dtype, target = _parse_precision(precision)
    if max_samples is not None and max_samples < 1:
        raise EqauditError(f"--max-samples must be >= 1, got {max_samples}", key="--max-samples")
    if max_samples is not None and target is None:
        raise EqauditError("--max-samples caps sequential sampling, which needs --precision EPS",
                           key="--max-samples", hint="e.g. --precision 0.01 --max-samples 100000")

    if device is not None:
        resolve_device(device)  # refuse a bad --device before loading anything
    ckpt_label = None
    if model is None:
        path = Path(checkpoint) if checkpoint is not None else spec.model.checkpoint
        model = spec.build_model(checkpoint, trust_checkpoint=trust_checkpoint)
        ckpt_label = _display_path(path) if path is not None else None
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
    dtype = _dtype_of(model) if is_module else torch.get_default_dtype()
    forward_model: Any = model
    if compile:
        forward_model = torch.compile(model)
    if autocast_dtype is not None:
        forward_model = _Autocast(forward_model, dev, autocast_dtype)
    plan: _LayerPlan | None = None
    try:
        sampler = PointSampler(spec, dev, dtype)
        sample_numel = max(1, math.prod(sampler.shape))
        max_rows: int | None = None  # rows per model call; None: a whole chunk (or fused group) per call
        measured: Probe | None = None
        if batch_size is not None:
            chunk = round_up(int(batch_size), BLOCK)
        else:
            chunk = auto_batch_size(sample_numel, dev, spec.samples)
            if dev.type == "cpu" and is_module and chunk > BLOCK:  # may the model's layers want less?
                with torch.inference_mode():
                    points = sampler.draw(SampleRNG.for_range(spec.seed, 0, BLOCK, dev))
                    measured = probe(model, points)
        plan = _LayerPlan.build(model, spec)
        copies = _copies_per_sample(spec)
        if measured is not None:
            if plan is None:
                max_rows = forward_rows(measured.layer, dev)
            else:  # the layer taps record each check's rows in one call: bound the chunk instead
                chunk = auto_batch_size(sample_numel, dev, spec.samples, layer_bytes=measured.layer, copies=copies)
        if batch_size is None:
            held = measured.held(copies) if measured is not None else None
            chunk = bounded_chunk(chunk, dev, held, world.size, spec.samples)
        local = BlockStats(spec.samples, _n_columns(spec) + (plan.n_columns if plan else 0), dev)
        fixed = batch_size is not None
        with torch.inference_mode():
            chunk = _run(forward_model, spec, sampler, local, dev, chunk, fixed, progress, world, plan=plan,
                         max_rows=max_rows)
            stats = _reduced(local, world)
            if target is not None:
                cap = max_samples if max_samples is not None else 16 * spec.samples
                while True:
                    n_next = _next_sample_count(stats.summaries(confidence)[: len(spec.checks)], target,
                                                spec.samples, cap)
                    if n_next is None:
                        break
                    begin = (spec.samples // BLOCK) * BLOCK  # a partial last block is redone whole
                    local = local.grown(n_next)
                    local.clear_from(begin)
                    spec = spec.replace(samples=n_next)
                    _run(forward_model, spec, sampler, local, dev, chunk, fixed, progress, world, begin=begin,
                         plan=plan, max_rows=max_rows)
                    stats = _reduced(local, world)
            if plan is not None:
                plan.tap.remove()
            floors = noise_floors(forward_model, spec, sampler, dev) if noise_floor else None
            summaries = stats.summaries(confidence)
            hints = _inverse_hints(forward_model, spec, sampler, dev, summaries, gate)
    finally:
        if plan is not None:
            plan.tap.remove()  # never leave hooks on the user's model
        if is_module and was_training:
            model.train(True)

    results = []
    for (j, check), s in zip(enumerate(spec.checks), summaries):
        if s.nonfinite:
            name = check.distance.name
            undefined = name == "cross_entropy" or (":" in name and not name.startswith("lp:"))  # or user code
            raise spec.error(
                f"checks[{j}]",
                f"check '{check.name}': the error is not finite (NaN or Inf) on {s.nonfinite} of "
                f"{s.nonfinite + s.n} samples: the model's outputs are not finite there"
                + (f", or distance '{name}' is undefined on them (e.g. the log of a zero probability)"
                   if undefined else ""),
                "check the input bounds and dtype, or the model" + (", or use another distance" if undefined else ""),
            )
        if s.n == 0:
            raise spec.error(
                "num_funcs" if spec.num_funcs is not None else f"checks[{j}]",
                f"check '{check.name}' drew no samples"
                + (f" (num_funcs: {spec.num_funcs} of {len(spec.checks)} checks per sample, {spec.samples} samples)"
                   if spec.num_funcs is not None else ""),
                "raise samples so that every check is measured",
            )
        gated = s.ci_high if gate == "upper" else s.mean
        results.append(
            CheckResult(
                name=check.name,
                input=check.input_text,
                output=check.output_text,
                distance=check.distance.name,
                n=s.n,
                mean=s.mean,
                std=s.std,
                stderr=s.stderr,
                ci_low=s.ci_low,
                ci_high=s.ci_high,
                confidence=confidence,
                epsilon=check.epsilon,
                threshold=check.threshold,
                weight=check.weight,
                penalty=check.weight * max(0.0, s.mean - check.epsilon),
                passed=bool(gated <= check.threshold),
                max=s.max,
                gate=gate,
                p50=s.p50,
                p95=s.p95,
                p99=s.p99,
                quantile_n=s.quantile_n,
                noise_floor=floors[j] if floors is not None else math.nan,
                hint=hints.get(j),
                elements=_element_results(spec, j, summaries, check.threshold, gate),
                layers=plan.results(j, summaries) if plan is not None else None,
                mask=check.mask,
            )
        )
    notes = list(plan.notes()) if plan is not None else []
    if world.size > 1:
        notes.append(f"samples split across {world.size} processes")
    if autocast_dtype is not None:
        notes.append(f"forward passes under {precision} autocast; distances in float64")
    if spec.input.sampling == "sobol":
        notes.append("points are scrambled Sobol (quasi-Monte Carlo); the confidence intervals assume "
                     "independent samples, so they are conservative")
    if target is not None:
        worst = max((r.ci_high - r.ci_low) / 2 for r in results)
        reached = "reached" if worst <= target else f"NOT reached (sample cap {spec.samples})"
        notes.append(f"--precision {target:g}: {spec.samples} samples, largest half-width {worst:.3g}: {reached}")
    for check in spec.checks:
        if check.group is not None and not check.group.exact:
            notes.append(f"check '{check.name}': {check.group.label} rotates by angles that are not multiples of 90 "
                         "degrees with bilinear interpolation, so the group action is inexact (even an invariant "
                         "model shows an error)")
    for j, text in sorted(hints.items()):
        notes.append(f"check '{spec.checks[j].name}': {text}")
    if was_training:
        notes.append("the model was in training mode; it was evaluated in eval mode (dropout off, batch norm frozen)")
    return Report(
        checks=tuple(results),
        spec=spec.file,
        checkpoint=ckpt_label,
        device=str(dev),
        seed=spec.seed,
        samples=spec.samples,
        elapsed_s=time.perf_counter() - t0,
        gate=gate,
        batch_size=chunk,
        model_was_training=was_training,
        notes=tuple(notes),
        noise_floor=_max_finite(floors),
        sampling=spec.input.sampling,
        target_halfwidth=target,
    )


def _display_path(path: Path) -> str:
    """The path relative to the working directory when it lies below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _parse_precision(precision: str | float | None) -> tuple[torch.dtype | None, float | None]:
    """``--precision``: a forward dtype (fp32, bf16, fp16) or a number EPS > 0 (the target
    confidence half-width of sequential sampling)."""
    eps: float | None = None
    if isinstance(precision, (int, float)) and not isinstance(precision, bool):
        eps = float(precision)
    elif isinstance(precision, str):
        try:
            eps = float(precision)
        except ValueError:
            eps = None
    if eps is None:
        return _autocast_dtype(precision), None  # type: ignore[arg-type]
    if not math.isfinite(eps) or eps <= 0:
        raise EqauditError(f"a target half-width must be a number > 0, got {precision}", key="--precision",
                           hint="give fp32, bf16, fp16, or a positive number such as 0.01")
    return None, eps


def _next_sample_count(summaries: list[Any], target: float, n: int, cap: int) -> int | None:
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


def _element_results(spec: Spec, j: int, summaries: list[Any], threshold: float,
                     gate: str) -> list[dict[str, Any]] | None:
    """Per-element figures of a ``group:`` check (JSON-safe: non-finite numbers become None)."""
    check = spec.checks[j]
    if check.group is None:
        return None
    first = _element_columns(spec)[j]
    out = []
    for e, name in enumerate(check.group.element_names()):
        s = summaries[first + e]
        row: dict[str, Any] = {"element": name}
        for key in ("n", "mean", "std", "stderr", "ci_low", "ci_high", "max", "p50", "p95", "p99"):
            v = getattr(s, key)
            row[key] = v if not isinstance(v, float) or math.isfinite(v) else None
        gated = s.ci_high if gate == "upper" else s.mean
        row["passed"] = bool(gated <= threshold)
        out.append(row)
    return out


def _max_finite(values: list[float] | None) -> float:
    finite = [v for v in values or [] if math.isfinite(v)]
    return max(finite) if finite else math.nan


def noise_floors(model: Any, spec: Spec, sampler: PointSampler, dev: torch.device) -> list[float]:
    """Each check's distance between two evaluations of the model on the same points: the error
    of the identity transform, i.e. run-to-run nondeterminism plus the rounding differences of a
    different batch size (the first ``min(samples, 64)`` points, forwarded alone and then
    concatenated with themselves). Fixed points and batch sizes: independent of ``--batch-size``."""
    n0 = min(spec.samples, BLOCK)
    x = sampler.draw(SampleRNG.for_range(spec.seed, 0, n0, dev))
    try:
        y1 = model(x)
        y2 = model(torch.cat([x, x]))[:n0]
    except Exception:
        return [math.nan] * len(spec.checks)
    a, b = _f64(y1), _f64(y2)
    means: list[torch.Tensor | None] = []
    same: dict[str, torch.Tensor | None] = {}  # checks with the same built-in distance agree
    for check in spec.checks:  # stay on the device: one transfer for all checks at the end
        dist = check.distance
        key = dist.name if isinstance(dist, Distance) and dist.batchable else None
        if key is not None and key in same:
            means.append(same[key])
            continue
        try:
            m: torch.Tensor | None = _f64(dist(a, b).reshape(-1)).mean()  # NaN or Inf if any is
        except Exception:
            m = None
        means.append(m)
        if key is not None:
            same[key] = m
    got = [m for m in means if m is not None]
    values = iter(torch.stack(got).tolist() if got else [])
    return [next(values) if m is not None else math.nan for m in means]


def _first_block_mean(model: Any, spec: Spec, sampler: PointSampler, dev: torch.device, j: int,
                      output: Any) -> float:
    """Mean error of check ``j`` on the first 64 samples with ``output`` as its output transform
    (the same draws as the audit)."""
    check = spec.checks[j]
    n0 = min(spec.samples, BLOCK)
    rng = SampleRNG.for_range(spec.seed, 0, n0, dev)
    x = sampler.draw(rng)
    crng = rng.child(f"check:{check.stream_name}")
    p_in = check.input.sample(crng)
    p_out = p_in if check.both else check.output.sample(crng.child("output"))
    a = output.apply(model(x), p_out)
    b = model(check.input.apply(x, p_in))
    if check.mask == "valid":  # the same region as the audit, with this output transform
        item = _Pending(j, None, x, p_out, "", f"checks[{j}].output")
        item.valid = check.input.apply(torch.ones_like(x), p_in) >= 1.0 - 1e-6
        a, b = _masked(a, b, item, dataclasses.replace(check, output=output), spec, dev)
    return float(check.distance(a.to(torch.float64), b.to(torch.float64)).to(torch.float64).mean())


def _inverse_hints(model: Any, spec: Spec, sampler: PointSampler, dev: torch.device,
                   summaries: list[Any], gate: str) -> dict[int, str]:
    """For each failing check whose output transform the zoo can invert: when the inverted output
    transform fits at least 10x better on the first 64 samples, a hint that it may be inverted."""
    from transforms_zoo.group import inverse_of

    hints: dict[int, str] = {}
    for j, (check, s) in enumerate(zip(spec.checks, summaries)):
        gated = s.ci_high if gate == "upper" else s.mean
        if not gated > check.threshold or check.output.name == "identity":
            continue
        inv = inverse_of(check.output)
        if inv is None:
            continue
        try:
            inv_text = inv.describe()
            if inv_text == check.output.describe():
                continue  # self-inverse: nothing to learn
            base = _first_block_mean(model, spec, sampler, dev, j, check.output)
            flipped = _first_block_mean(model, spec, sampler, dev, j, inv)
        except Exception:
            continue
        if math.isfinite(base) and math.isfinite(flipped) and base > 0 and flipped * 10 <= base:
            hints[j] = (f"the inverse output transform {inv_text} fits {base / max(flipped, 1e-300):.3g}x better "
                        f"(mean {flipped:.3g} vs {base:.3g} on the first {min(spec.samples, BLOCK)} samples): "
                        "the output transform may be inverted (R vs R^T / rot90 direction)")
    return hints


def _autocast_dtype(precision: str | None) -> torch.dtype | None:
    if precision in (None, "fp32", "float32", "model"):
        return None
    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
    if precision not in table:
        raise EqauditError(f"unknown precision '{precision}'", key="--precision", hint="use fp32, bf16 or fp16")
    return table[precision]


class _Autocast:
    """Calls a model under ``torch.autocast`` (mixed-precision forward passes)."""

    def __init__(self, model: Any, device: torch.device, dtype: torch.dtype) -> None:
        self.model, self.device_type, self.dtype = model, device.type, dtype

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(x)


def _run(
    model: Any,
    spec: Spec,
    sampler: PointSampler,
    stats: BlockStats,
    dev: torch.device,
    chunk: int,
    fixed: bool,
    progress: Progress | None,
    world: World = World(),
    begin: int = 0,
    plan: Any = None,
    max_rows: int | None = None,
) -> int:
    """Process this process's share of the chunk grid. On out-of-memory a chunk is processed in
    halves (the grid, hence the split across processes, stays the same), and later chunks use
    the smaller size; with a user-fixed batch size it is an error instead."""
    n = spec.samples
    starts = list(range(begin, n, chunk))
    mine = starts[world.rank :: world.size]
    step = chunk
    done = begin
    for start in mine:
        end = min(start + chunk, round_up(n, BLOCK))
        pos = start
        while pos < end:
            length = min(step, end - pos)
            try:
                _chunk(model, spec, sampler, stats, dev, pos, length, plan, max_rows)
            except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
                if not _is_oom(exc) or step <= BLOCK:
                    raise
                if fixed:
                    raise EqauditError(
                        f"out of memory with --batch-size {chunk}", key="--batch-size",
                        hint="use a smaller batch size or omit it",
                    ) from None
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                step = max(BLOCK, (step // 2 // BLOCK) * BLOCK)
                continue
            pos += length
            done += min(length, max(0, n - (pos - length)))
            if progress is not None:
                progress(min(done * world.size, n), n)
    return step


def _forward(model: Any, x: torch.Tensor, spec: Spec, key: str) -> torch.Tensor:
    try:
        y = model(x)
    except (torch.cuda.OutOfMemoryError, MemoryError):
        raise
    except Exception as exc:
        if _is_oom(exc):
            raise
        raise spec.error(
            key, f"the model failed on a batch of shape {list(x.shape)}: {first_line(exc)}",
            "check input.shape (one sample, no batch dimension) and the transforms",
        ) from None
    if not isinstance(y, torch.Tensor):
        raise spec.error(key, f"the model returned {type(y).__name__}, expected a tensor")
    if y.dim() == 0 or y.shape[0] != x.shape[0]:
        raise spec.error(key, f"the model returned shape {list(y.shape)} for a batch of {x.shape[0]}",
                         "the model must keep the batch dimension first")
    return y


def _apply(t: Any, x: torch.Tensor, params: Any, spec: Spec, key: str) -> torch.Tensor:
    try:
        return t.apply(x, params)
    except TransformError as exc:
        raise spec.error(key, exc.message, exc.hint) from None
    except (torch.cuda.OutOfMemoryError, MemoryError):
        raise
    except Exception as exc:
        if _is_oom(exc):
            raise
        raise spec.error(key, f"transform {t.describe()} failed on shape {list(x.shape)}: {first_line(exc)}") from None


def _sample(t: Any, rng: SampleRNG, spec: Spec, key: str) -> Any:
    try:
        return t.sample(rng)
    except TransformError as exc:
        raise spec.error(key, exc.message, exc.hint) from None
    except (ValueError, RuntimeError) as exc:
        if _is_oom(exc):
            raise
        raise spec.error(key, f"drawing the parameters of {t.describe()} failed: {first_line(exc)}") from None


def _chunk(
    model: Any, spec: Spec, sampler: PointSampler, stats: BlockStats, dev: torch.device, start: int, length: int,
    plan: Any = None, max_rows: int | None = None,
) -> None:
    """One chunk: draw points, forward them once, forward every check's transformed points in
    one fused batch (per input shape; in calls of at most ``max_rows`` rows when given), then fold
    each check's distances into the statistics."""
    assert plan is None or max_rows is None, "the layer taps count model calls: one per fused group"
    rng = SampleRNG.for_range(spec.seed, start, start + length, dev)
    valid = rng.index < spec.samples
    x = sampler.draw(rng)
    if plan is not None:
        plan.tap.clear()
    y = _forward_rows(model, x, spec, "input.shape", max_rows)
    k_checks = len(spec.checks)
    rows_of: list[torch.Tensor] | None = None
    if spec.num_funcs is not None:
        rows_of = _rows_by_check(rng.child("num_funcs").choice(spec.num_funcs, k_checks), k_checks)

    # 1. Transform the inputs of every check (parameters drawn once per sample).
    work: list[_Pending] = []
    for j, check in enumerate(spec.checks):
        where = f"checks[{j}]"
        crng = rng.child(f"check:{check.stream_name}")
        if rows_of is not None:
            rows: torch.Tensor | None = rows_of[j]
            xs, crng = x[rows], crng.select(rows)
        else:
            rows, xs = None, x
        in_key = f"{where}.both" if check.both else f"{where}.input"
        out_key = f"{where}.both" if check.both else f"{where}.output"
        if xs.shape[0] == 0:
            stats.update(j, start, torch.zeros(length, dtype=torch.float64, device=dev),
                         torch.zeros(length, dtype=torch.bool, device=dev))
            continue
        if check.mode == "lie":  # forward-mode AD along the path: its own forward, not a tapped pass
            with plan.tap.paused() if plan is not None else contextlib.nullcontext():
                e = torch.cat([_lie_errors(model, spec, j, part) for part in _row_pieces(xs, max_rows)])
            _store(stats, j, start, e, rows, valid, length, dev)
            continue
        if check.group is not None:  # every element on every sample
            g_key = f"{where}.group"
            for e, element in enumerate(check.group.elements):
                item = _Pending(j, rows, _apply(element, xs, None, spec, g_key), None, g_key, f"{where}.output")
                item.element = e
                work.append(item)
            continue
        p_in = _sample(check.input, crng, spec, in_key)
        p_out = p_in if check.both else _sample(check.output, crng.child("output"), spec, out_key)
        item = _Pending(j, rows, _apply(check.input, xs, p_in, spec, in_key), p_out, in_key, out_key)
        item.p_in = p_in
        if check.mask == "valid":  # where the transform keeps content: it maps ones to ones there
            item.valid = _apply(check.input, torch.ones_like(xs), p_in, spec, in_key) >= 1.0 - 1e-6
        work.append(item)

    # 2. One forward per distinct transformed shape (usually one for all checks).
    _forward_fused(model, work, spec, max_rows)
    if plan is not None:
        plan.fold(work, stats, start, valid, tuple(x.shape[-2:]))

    # 3. Compare with the output transform of the shared base outputs.
    pairs: list[tuple[_Pending, torch.Tensor, torch.Tensor]] = []
    for item in work:
        check = spec.checks[item.check]
        ys = y if item.rows is None else y[item.rows]
        if item.element is not None:
            element = check.group.elements[item.element]
            a = _apply(element, ys, None, spec, item.out_key) if check.both else ys
        else:
            a = _apply(check.output, ys, item.p_out, spec, item.out_key)
        b = item.out
        if item.valid is not None:
            a, b = _masked(a, b, item, check, spec, dev)
        if a.shape != b.shape:
            raise spec.error(
                item.out_key,
                f"output transform gives shape {list(a.shape[1:])} but the model's output on transformed inputs "
                f"has shape {list(b.shape[1:])}",
                "the output transform must act on the model's outputs",
            )
        pairs.append((item, a, b))

    errors: list[torch.Tensor] = []
    done: list[int] = []  # the columns of ``errors``: checks that ran on all rows, not group elements
    columns = _element_columns(spec)
    group_sums: dict[int, torch.Tensor] = {}
    for item, e in zip(work, _distances(spec, pairs)):
        j, check = item.check, spec.checks[item.check]
        if item.element is not None:
            group_sums[j] = group_sums[j] + e if j in group_sums else e
            _store(stats, columns[j] + item.element, start, e, item.rows, valid, length, dev)
            if item.element == check.group.order - 1:  # the last element: the mean over the group
                _store(stats, j, start, group_sums.pop(j) / check.group.order, item.rows, valid, length, dev)
            continue
        if item.rows is not None:
            _store(stats, j, start, e, item.rows, valid, length, dev)
        else:
            errors.append(e)
            done.append(j)
    if errors:  # every check that ran on all rows: one vectorised update
        cols = slice(done[0], done[-1] + 1) if done == list(range(done[0], done[-1] + 1)) else done
        e_all = torch.stack(errors, dim=1)
        stats.update(cols, start, e_all, valid[:, None].expand_as(e_all))


def _rows_by_check(picks: torch.Tensor, k: int) -> list[torch.Tensor]:
    """Each of ``k`` checks' rows, ascending, given the checks each row picked (``(n, m)``, distinct
    per row). One read back to the host per chunk (the counts), not one per check."""
    flat = picks.reshape(-1)
    order = torch.sort(flat, stable=True).indices  # grouped by check; row-major, so rows ascend within
    # scatter_add, not bincount: bincount sizes its output from the data (two more syncs on CUDA)
    counts = torch.zeros(k, dtype=torch.int64, device=flat.device).scatter_add_(0, flat, torch.ones_like(flat)).tolist()
    return list(torch.split(order // picks.shape[1], counts))


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float64 else t.to(torch.float64)


def _distance(spec: Spec, j: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Check ``j``'s per-row distances (float64, shape ``(n,)``), failures located at its key."""
    check = spec.checks[j]
    try:
        e = check.distance(_f64(a), _f64(b))
    except EqauditError as exc:
        raise exc.located(file=spec.file, key=f"checks[{j}].distance") from None
    except (torch.cuda.OutOfMemoryError, MemoryError):
        raise
    except Exception as exc:
        if _is_oom(exc):
            raise  # the chunk loop backs off to a smaller chunk
        raise spec.error(f"checks[{j}].distance",
                         f"distance '{check.distance.name}' failed: {first_line(exc)}") from None
    return _f64(e.reshape(-1))


def _distances(spec: Spec, pairs: list[tuple[Any, torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    """Per-row distances of every (item, a, b): pairs with the same built-in distance and output
    shape are computed in one call on their concatenation (the distances are row-wise, so the
    values are those of separate calls; a user's callable always sees its own check's rows)."""
    out: list[torch.Tensor | None] = [None] * len(pairs)
    batches: dict[tuple[Any, ...], list[int]] = {}
    for i, (item, a, b) in enumerate(pairs):
        dist = spec.checks[item.check].distance
        if isinstance(dist, Distance) and dist.batchable:
            batches.setdefault((dist.name, tuple(a.shape[1:]), a.dtype, b.dtype), []).append(i)
        else:
            out[i] = _distance(spec, item.check, a, b)
    for members in batches.values():
        if len(members) == 1:
            i = members[0]
            out[i] = _distance(spec, pairs[i][0].check, pairs[i][1], pairs[i][2])
            continue
        a = torch.cat([pairs[i][1] for i in members])
        b = torch.cat([pairs[i][2] for i in members])
        try:
            e = _distance(spec, pairs[members[0]][0].check, a, b)
        except EqauditError:
            for i in members:  # name the check whose outputs the distance rejects
                _distance(spec, pairs[i][0].check, pairs[i][1], pairs[i][2])
            raise
        for i, part in zip(members, torch.split(e, [pairs[i][1].shape[0] for i in members])):
            out[i] = part
    return out  # type: ignore[return-value]


def _masked(a: torch.Tensor, b: torch.Tensor, item: Any, check: Any, spec: Spec,
            dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero both outputs outside the region valid on both sides (``mask: valid``): the pixels the
    input transform keeps in frame, and those the output transform keeps in frame."""
    key = f"checks[{item.check}].mask"
    valid = item.valid
    if a.dim() < 3 or a.shape[-2:] != valid.shape[-2:] or a.shape != b.shape:
        raise spec.error(key, f"'mask: valid' compares images of the input's size {list(valid.shape[-2:])}; "
                         f"the outputs have shape {list(b.shape[1:])}", "use it for image-to-image models")
    keep = valid.reshape(valid.shape[0], -1, *valid.shape[-2:]).all(dim=1)  # (n, H, W): every channel kept
    if check.output.name != "identity":
        ones = torch.ones_like(a)
        kept_out = _apply(check.output, ones, item.p_out, spec, item.out_key) >= 1.0 - 1e-6
        keep = keep & kept_out.reshape(kept_out.shape[0], -1, *kept_out.shape[-2:]).all(dim=1)
    m = keep.reshape(keep.shape[0], *([1] * (a.dim() - 3)), *keep.shape[-2:]).to(a.dtype)
    return a * m, b * m


class _Pending:
    """A check's transformed inputs waiting for the fused forward pass."""

    __slots__ = ("check", "rows", "x", "p_out", "in_key", "out_key", "out", "element", "valid", "p_in", "call",
                 "offset")

    def __init__(self, check: int, rows: torch.Tensor | None, x: torch.Tensor, p_out: Any,
                 in_key: str, out_key: str) -> None:
        self.check, self.rows, self.x, self.p_out = check, rows, x, p_out
        self.in_key, self.out_key = in_key, out_key
        self.out: torch.Tensor = x
        self.element: int | None = None  # group checks: the element's index
        self.valid: torch.Tensor | None = None  # mask: valid — pixels the input transform keeps
        self.p_in: Any = None
        self.call, self.offset = 0, 0  # which fused forward pass carried these rows, and where


def lie_derivative(model: Any, check: Any, x: torch.Tensor) -> torch.Tensor:
    """``d/dt f_out(t)^-1 f(f_in(t)(x))`` at ``t = 0`` per sample, by forward-mode AD
    (``torch.func.jvp``), for transforms with a one-parameter path (``lie_path(x, t)``)."""
    import warnings

    t_in = check.input
    t_out = check.input if check.both else (None if check.output.name == "identity" else check.output)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.enable_grad():
        # torch.func scripts a helper on first use, which warns about torch.jit.script in torch 2.13
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
        xc = x.clone()
        real = xc.dtype if xc.is_floating_point() else torch.float32
        t0 = torch.zeros(xc.shape[0], dtype=real, device=xc.device)

        def path(t: torch.Tensor) -> torch.Tensor:
            y = model(t_in.lie_path(xc, t))
            return t_out.lie_path(y, -t) if t_out is not None else y

        _, d = torch.func.jvp(path, (t0,), (torch.ones_like(t0),))
    return d.detach()


def _lie_errors(model: Any, spec: Spec, j: int, x: torch.Tensor) -> torch.Tensor:
    """The check's norm of the Lie derivative, per sample (float64)."""
    check = spec.checks[j]
    try:
        d = lie_derivative(model, check, x)
    except TransformError as exc:
        raise spec.error(f"checks[{j}].{'both' if check.both else 'input'}", exc.message, exc.hint) from None
    except (torch.cuda.OutOfMemoryError, MemoryError):
        raise
    except Exception as exc:
        if _is_oom(exc):
            raise
        raise spec.error(f"checks[{j}].mode", "the Lie derivative failed (forward-mode AD through the model): "
                         f"{first_line(exc)}", "the model must support torch.func.jvp") from None
    d = d.to(torch.float64)
    return check.distance(d, torch.zeros_like(d)).reshape(-1).to(torch.float64)


def _store(stats: BlockStats, column: int, start: int, e: torch.Tensor, rows: torch.Tensor | None,
           valid: torch.Tensor, length: int, dev: torch.device) -> None:
    """Fold one column's errors (for all rows, or for ``rows`` of the chunk) into the statistics."""
    if rows is None:
        stats.update(column, start, e, valid)
        return
    full = torch.zeros(length, dtype=torch.float64, device=dev)
    full[rows] = e
    mask = torch.zeros(length, dtype=torch.bool, device=dev)
    mask[rows] = True
    stats.update(column, start, full, mask & valid)


class _LayerPlan:
    """Which checks get per-layer errors, in which statistics columns, and the hooks recording them."""

    def __init__(self, spec: Spec, layers: list[tuple[str, Any]], checks: list[int], first: int) -> None:
        from .layers import LayerTap

        self.spec, self.names, self.checks = spec, [n for n, _ in layers], checks
        self.first = first
        self.tap = LayerTap(layers)
        self.skipped: dict[tuple[int, str], str] = {}
        self.strided: dict[tuple[int, str], tuple[int, int]] = {}  # shifts divided by a map's stride
        self.maps: set[str] = set()  # layers seen with a 4-D (N, C, H, W) output

    @classmethod
    def build(cls, model: Any, spec: Spec) -> _LayerPlan | None:
        from .layers import acts_on_features, resolve_layers

        layers = resolve_layers(model, spec)
        if not layers:
            return None
        checks = [j for j, c in enumerate(spec.checks)
                  if c.group is None and c.mode == "sample" and acts_on_features(c.input) and spec.num_funcs is None]
        return cls(spec, layers, checks, _n_columns(spec))

    @property
    def n_columns(self) -> int:
        return len(self.checks) * len(self.names)

    def column(self, j: int, layer: int) -> int:
        return self.first + self.checks.index(j) * len(self.names) + layer

    def fold(self, work: list[Any], stats: BlockStats, start: int, valid: torch.Tensor, hw: tuple[int, ...]) -> None:
        from .layers import is_feature_map, layer_errors, map_stride

        for name in self.names:
            recorded = self.tap.outputs[name]
            if recorded and is_feature_map(recorded[0]):
                self.maps.add(name)
        for item in work:
            if item.check not in self.checks or item.rows is not None or item.element is not None:
                continue
            check = self.spec.checks[item.check]
            n = item.out.shape[0]
            errors = layer_errors(self.tap, check, item.p_in, item.call, item.offset, n, hw)
            for li, name in enumerate(self.names):
                e = errors[name]
                if isinstance(e, str):
                    self.skipped[(item.check, name)] = e
                    continue
                keep = valid
                if isinstance(e, tuple):  # a shift on a strided map: only samples it divides
                    e, kept = e
                    keep = valid & kept
                    stride = map_stride(hw, tuple(self.tap.outputs[name][0].shape[-2:])) or (1, 1)
                    self.strided[(item.check, name)] = stride
                    self.skipped.setdefault((item.check, name), f"no sample's shift is a multiple of the map's "
                                            f"stride {stride[0]}x{stride[1]}")
                stats.update(self.column(item.check, li), start, e, keep)

    def results(self, j: int, summaries: list[Any]) -> list[dict[str, Any]] | None:
        if j not in self.checks:
            return None
        out = []
        for li, name in enumerate(self.names):
            if self.spec.layers == "all" and name not in self.maps:
                continue  # "all": the leaf modules whose outputs are (N, C, H, W) feature maps
            s = summaries[self.column(j, li)]
            if s.n == 0:
                out.append({"name": name, "skipped": self.skipped.get((j, name), "no samples")})
            else:
                row = {"name": name, "n": s.n, "mean": s.mean, "std": s.std, "ci_low": s.ci_low,
                       "ci_high": s.ci_high, "max": s.max}
                if (j, name) in self.strided:  # n counts the samples whose shift the stride divides
                    row["stride"] = list(self.strided[(j, name)])
                out.append(row)
        return out

    def notes(self) -> list[str]:
        skipped = [c.name for j, c in enumerate(self.spec.checks) if j not in self.checks]
        if not skipped:
            return []
        return ["per-layer errors skip checks whose transform does not act on feature maps (or with "
                "num_funcs, group: or mode: lie): " + ", ".join(skipped)]


def _element_columns(spec: Spec) -> dict[int, int]:
    """The statistics column of element 0 of each group check (after one column per check)."""
    cols, nxt = {}, len(spec.checks)
    for j, check in enumerate(spec.checks):
        if check.group is not None:
            cols[j] = nxt
            nxt += check.group.order
    return cols


def _copies_per_sample(spec: Spec) -> int:
    """Transformed copies of each sample in the fused forward pass."""
    per_check = [c.group.order if c.group is not None else 1 for c in spec.checks]
    if spec.num_funcs is not None:
        return max(1, sum(sorted(per_check, reverse=True)[: spec.num_funcs]))
    return max(1, sum(per_check))


def _n_columns(spec: Spec) -> int:
    return len(spec.checks) + sum(c.group.order for c in spec.checks if c.group is not None)


def _packed(items: list[_Pending], max_rows: int | None) -> list[list[_Pending]]:
    """``items`` in runs of consecutive items whose rows fit one call of ``max_rows`` rows (all
    in one run when ``max_rows`` is None; an item larger than ``max_rows`` in a run of its own).
    A run below one statistics block of rows joins its neighbour, so that no call is smaller than
    the batch sizes the report's bit-reproducibility is promised for."""
    if max_rows is None:
        return [items]
    runs: list[list[_Pending]] = []
    rows = 0
    for it in items:
        n = it.x.shape[0]
        if runs and (rows + n <= max_rows or rows < BLOCK):
            runs[-1].append(it)
            rows += n
        else:
            runs.append([it])
            rows = n
    if len(runs) > 1 and rows < BLOCK:
        runs[-2].extend(runs.pop())
    return runs


def _row_pieces(x: torch.Tensor, max_rows: int | None) -> list[torch.Tensor]:
    """``x`` in pieces of at most ``max_rows`` rows (whole when ``max_rows`` is None); a last piece
    below one statistics block joins the one before it."""
    n = x.shape[0]
    if max_rows is None or n <= max_rows:
        return [x]
    starts = list(range(0, n, max_rows))
    if n - starts[-1] < BLOCK:
        starts.pop()
    return [x[a:b] for a, b in zip(starts, starts[1:] + [n])]


def _forward_rows(model: Any, x: torch.Tensor, spec: Spec, key: str, max_rows: int | None) -> torch.Tensor:
    """``model(x)`` in calls of at most ``max_rows`` rows (see :func:`_row_pieces`)."""
    pieces = _row_pieces(x, max_rows)
    if len(pieces) == 1:
        return _forward(model, x, spec, key)
    return torch.cat([_forward(model, piece, spec, key) for piece in pieces])


def _forward_fused(model: Any, work: list[_Pending], spec: Spec, max_rows: int | None = None) -> None:
    """Run the model once on the concatenation of all pending inputs of the same shape or, with
    ``max_rows``, on runs of consecutive inputs that fit one call of ``max_rows`` rows (an input
    larger than that alone, in calls of ``max_rows`` rows: it is a large batch already)."""
    groups: dict[tuple[tuple[int, ...], torch.dtype], list[_Pending]] = {}
    for item in work:
        groups.setdefault((tuple(item.x.shape[1:]), item.x.dtype), []).append(item)
    call = 1  # pass 0 is the base forward
    for batch in (b for items in groups.values() for b in _packed(items, max_rows)):
        offset = 0
        for it in batch:
            it.call, it.offset = call, offset
            offset += it.x.shape[0]
        call += 1
        x = batch[0].x if len(batch) == 1 else torch.cat([it.x for it in batch])
        try:
            out = _forward_rows(model, x, spec, batch[0].in_key, max_rows)
        except EqauditError:
            for it in batch if len(batch) > 1 else []:  # find the check whose inputs the model rejects
                it.out = _forward(model, it.x, spec, it.in_key)
            raise
        for it, part in zip(batch, torch.split(out, [it.x.shape[0] for it in batch])):
            it.out = part
            it.x = part  # release the input
