"""The audit's options, validated once: a bad value is an :class:`ArgumentError` naming the Python
parameter (the CLI maps it to its flag)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from ..errors import ArgumentError
from ..report import GATES
from ..spec import MAX_SAMPLES

_AUTOCAST = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def check_gate_confidence(gate: str, confidence: float) -> None:
    """``gate`` is ``mean`` or ``upper``; ``confidence`` lies in (0, 1)."""
    if gate not in GATES:
        raise ArgumentError("gate", f"unknown gate '{gate}'", hint="use mean or upper")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.0 < confidence < 1.0:
        raise ArgumentError("confidence", f"confidence must lie in (0, 1), got {confidence}")


def check_samples(samples: int, argument: str = "samples") -> int:
    """A sample count in ``1 .. MAX_SAMPLES``."""
    if isinstance(samples, bool) or not isinstance(samples, numbers.Integral):
        raise ArgumentError(argument, f"{argument} must be an integer, got {samples!r}")
    if samples < 1:
        raise ArgumentError(argument, f"{argument} must be >= 1, got {samples}")
    if samples > MAX_SAMPLES:
        raise ArgumentError(argument, f"{argument} {samples} is too large (at most {MAX_SAMPLES})")
    return int(samples)


@dataclass(frozen=True)
class Precision:
    """``precision`` parsed: a forward dtype under autocast, or a target confidence half-width."""

    autocast: torch.dtype | None = None
    target_halfwidth: float | None = None


def parse_precision(precision: str | float | None) -> Precision:
    """A forward dtype (``fp32``, ``bf16``, ``fp16``) or a number EPS > 0 (the target confidence
    half-width of sequential sampling)."""
    eps: float | None = None
    if isinstance(precision, (int, float)) and not isinstance(precision, bool):
        eps = float(precision)
    elif isinstance(precision, str):
        try:
            eps = float(precision)
        except ValueError:
            eps = None
    if eps is None:
        if precision in (None, "fp32", "float32", "model"):
            return Precision()
        if precision not in _AUTOCAST:
            raise ArgumentError("precision", f"unknown precision '{precision}'", hint="use fp32, bf16 or fp16")
        return Precision(autocast=_AUTOCAST[precision])  # type: ignore[index]
    if not math.isfinite(eps) or eps <= 0:
        raise ArgumentError("precision", f"a target half-width must be a number > 0, got {precision}",
                            hint="give fp32, bf16, fp16, or a positive number such as 0.01")
    return Precision(target_halfwidth=eps)


def check_run_options(batch_size: int | None, max_samples: int | None, precision: Precision) -> None:
    """``batch_size`` and ``max_samples`` are >= 1; ``max_samples`` needs a target half-width."""
    if batch_size is not None and batch_size < 1:
        raise ArgumentError("batch_size", f"batch_size must be >= 1, got {batch_size}")
    if max_samples is not None and max_samples < 1:
        raise ArgumentError("max_samples", f"max_samples must be >= 1, got {max_samples}")
    if max_samples is not None and precision.target_halfwidth is None:
        raise ArgumentError("max_samples", "max_samples caps sequential sampling, which needs a numeric precision",
                            hint="e.g. precision=0.01, max_samples=100000")
