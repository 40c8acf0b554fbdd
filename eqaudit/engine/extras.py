"""Figures beside the audit's estimates, measured on the first block of samples with the same
evaluation core: each check's noise floor (the error of the identity transform between two
batch sizes) and the hint that a failing check's output transform may be inverted."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import torch

from transforms_zoo import SampleRNG
from transforms_zoo import build as build_transform

from ..spec import Spec
from .distances import Distance
from .estimator import BLOCK
from .evaluate import evaluate_checks
from .forward import batch_dependent_width, forward_once
from .sampling import PointSampler


class _Doubled:
    """``model(cat([x, x]))[:n]``: the model's outputs at another batch size."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat([x, x]))[: x.shape[0]]


class FirstBlock:
    """The first ``min(samples, 64)`` samples as the audit draws them (the generator of their
    draws, their points) and the model's outputs there: what the noise floors and the inverse
    hints measure on, drawn and forwarded at most once for all of them (on first use)."""

    def __init__(self, model: Any, spec: Spec, sampler: PointSampler, dev: torch.device) -> None:
        self.model, self.spec, self.sampler = model, spec, sampler
        self.rng = SampleRNG.for_range(spec.seed, 0, min(spec.samples, BLOCK), dev)

    @functools.cached_property
    def x(self) -> torch.Tensor:
        """The points."""
        return self.sampler.draw(self.rng)

    @functools.cached_property
    def y(self) -> torch.Tensor:
        """``model(x)``, checked by :func:`forward_once` (a failure raises each time it is asked)."""
        return forward_once(self.model, self.x, self.spec, "input.shape")


def noise_floors(block: FirstBlock) -> list[float]:
    """Each check's distance between two evaluations of the model on the same points: the error
    of the identity transform, i.e. run-to-run nondeterminism plus the rounding differences of a
    different batch size (the points of ``block``, forwarded alone and then concatenated with
    themselves). Fixed points and batch sizes: independent of ``batch_size``.
    NaN where the model or the distance fails."""
    spec, rng, x = block.spec, block.rng, block.x
    n0 = x.shape[0]
    try:
        y, y_twice = block.y, _Doubled(block.model)(x)
    except Exception:
        return [math.nan] * len(spec.checks)
    if isinstance(y_twice, torch.Tensor) and y.shape[1:] != y_twice.shape[1:]:
        raise batch_dependent_width(spec, block.model, n0, y, 2 * n0, y_twice)
    identity = build_transform("identity")
    checks = [dataclasses.replace(c, input=identity, output=identity, both=False, group=None, mode="sample",
                                  mask="none") for c in spec.checks]
    means: list[torch.Tensor | None] = []
    same: dict[str, torch.Tensor | None] = {}  # checks with the same built-in distance agree
    for j, check in enumerate(checks):  # stay on the device: one transfer for all checks at the end
        dist = check.distance
        key = dist.name if isinstance(dist, Distance) and dist.batchable else None
        if key is not None and key in same:
            means.append(same[key])
            continue
        try:
            ev = evaluate_checks(lambda _x: y_twice, checks, x, y, rng, spec, chosen=[j], fuse=False)
            m: torch.Tensor | None = ev.checks[0].errors.mean()  # NaN or Inf if any is
        except Exception:
            m = None
        means.append(m)
        if key is not None:
            same[key] = m
    got = [m for m in means if m is not None]
    values = iter(torch.stack(got).tolist() if got else [])
    return [next(values) if m is not None else math.nan for m in means]


def first_block_errors(model: Any, spec: Spec, sampler: PointSampler, dev: torch.device, j: int,
                       outputs: list[Any]) -> list[torch.Tensor]:
    """Check ``j``'s per-sample errors on the first 64 samples (the audit's draws) with each of
    ``outputs`` as its output transform."""
    return block_errors(FirstBlock(model, spec, sampler, dev), j, outputs)


def block_errors(block: FirstBlock, j: int, outputs: list[Any]) -> list[torch.Tensor]:
    """Check ``j``'s per-sample errors on the samples of ``block`` with each of ``outputs`` as its
    output transform."""
    y = block.y
    errors = []
    for output in outputs:
        checks = list(block.spec.checks)
        checks[j] = dataclasses.replace(checks[j], output=output)
        errors.append(evaluate_checks(block.model, checks, block.x, y, block.rng, block.spec,
                                      chosen=[j]).checks[0].errors)
    return errors


def inverse_hints(block: FirstBlock, failing: list[bool]) -> dict[int, str]:
    """For each failing check whose output transform the zoo can invert: when the inverted output
    transform fits at least 10x better on the samples of ``block``, a hint that it
    may be inverted."""
    from transforms_zoo.group import inverse_of

    spec = block.spec
    hints: dict[int, str] = {}
    for j, check in enumerate(spec.checks):
        if not failing[j] or check.output.name == "identity":
            continue
        inv = inverse_of(check.output)
        if inv is None:
            continue
        try:
            inv_text = inv.describe()
            if inv_text == check.output.describe():
                continue  # self-inverse: nothing to learn
            base, flipped = (float(e.mean()) for e in block_errors(block, j, [check.output, inv]))
        except Exception:
            continue
        if math.isfinite(base) and math.isfinite(flipped) and base > 0 and flipped * 10 <= base:
            hints[j] = (f"the inverse output transform {inv_text} fits {base / max(flipped, 1e-300):.3g}x better "
                        f"(mean {flipped:.3g} vs {base:.3g} on the first {min(spec.samples, BLOCK)} samples): "
                        "the output transform may be inverted (R vs R^T / rot90 direction)")
    return hints
