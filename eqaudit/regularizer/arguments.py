"""The regularizer's arguments, parsed and validated: a bad one is a ``ValueError`` naming it
(``transforms[i]: epsilon``, ``dist``, ``bounds``, ``n``...) when it is given or reassigned."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from transforms_zoo import Transform, TransformError
from transforms_zoo import build as build_transform

from ..engine.distances import Distance, parse_distance
from ..errors import EqauditError
from .adapters import PlainTransform, ReplayedTransform, TorchDrawn, per_row_distance


@dataclass(frozen=True)
class ParsedCheck:
    """One transform tuple as the evaluation core runs it: ``f_in`` and ``f_out`` as transforms
    (the same one for a 3-tuple, ``both`` set), with its hinge and weight."""

    f_in: Transform
    f_out: Transform
    both: bool
    epsilon: float | torch.Tensor
    weight: float | torch.Tensor


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def parse_shape(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        out = tuple(int(s) for s in shape)
        ok = all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in shape)
    except TypeError:
        ok = False
    if not ok or any(s < 0 for s in out):
        raise ValueError(f"shape must be a tuple of non-negative ints (one sample, no batch dimension), got {shape!r}")
    return out


def parse_count(v: Any, name: str, minimum: int) -> int:
    if not isinstance(v, numbers.Integral) or isinstance(v, bool) or int(v) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def parse_num_funcs(v: Any) -> int | None:
    """``None`` means all checks."""
    if v is None or v == "all":
        return None
    if not isinstance(v, numbers.Integral) or isinstance(v, bool) or int(v) < 0:
        raise ValueError(f"num_funcs must be an integer >= 0 or 'all', got {v!r}")
    return int(v)


def _parse_weight(i: int, v: Any, name: str) -> float | torch.Tensor:
    if isinstance(v, torch.Tensor):
        if v.numel() != 1 or not v.is_floating_point():
            raise ValueError(f"transforms[{i}]: {name} must be a number, got a tensor of shape {tuple(v.shape)}")
        bad = not bool(v.detach() >= 0)
    elif _is_real(v):
        v = float(v)
        bad = not (v >= 0)
    else:
        raise ValueError(f"transforms[{i}]: {name} must be a number >= 0, got {v!r}")
    if bad:
        raise ValueError(f"transforms[{i}]: {name} must be >= 0, got {v!r}")
    if not bool(torch.isfinite(torch.as_tensor(v.detach() if isinstance(v, torch.Tensor) else v))):
        why = " (an infinite epsilon makes the penalty 0 whatever the model)" if name == "epsilon" else ""
        raise ValueError(f"transforms[{i}]: {name} must be finite, got {v!r}{why}")
    return v


def _parse_transform(i: int, f: Any, role: str, both: bool = False) -> Transform:
    """A transform of the tuple as the core applies it: a zoo transform drawn from torch's global
    generator; a plain callable as it is (a 3-tuple's replayed on the outputs)."""
    if isinstance(f, Transform):
        return TorchDrawn(f)
    if isinstance(f, (str, Mapping, list)):
        try:
            return TorchDrawn(build_transform(f))
        except TransformError as exc:
            raise ValueError(f"transforms[{i}]: {role}: {exc}") from None
    if callable(f):
        return ReplayedTransform(f) if both else PlainTransform(f)
    raise ValueError(
        f"transforms[{i}]: {role} must be a callable, a transforms_zoo Transform or a zoo name, "
        f"got {type(f).__name__}"
    )


def parse_checks(transforms: Any) -> tuple[list[tuple[Any, ...]], list[ParsedCheck]]:
    """``(snapshot, checks)``: the tuples' items as they are now, and the parsed checks."""
    if isinstance(transforms, (str, bytes, Mapping)) or not isinstance(transforms, Sequence):
        raise ValueError("transforms must be a list of (f_out, f_in, epsilon, lambda_eq) or (f, epsilon, lambda_eq) "
                         "tuples")
    checks = [_parse_check(i, t) for i, t in enumerate(transforms)]
    return [tuple(t) for t in transforms], checks


def same_items(snapshot: list[tuple[Any, ...]], transforms: Any) -> bool:
    """Whether ``transforms`` still holds the very objects of ``snapshot``."""
    if not isinstance(transforms, Sequence) or len(transforms) != len(snapshot):
        return False
    for old, t in zip(snapshot, transforms):
        if not isinstance(t, Sequence) or len(t) != len(old) or any(a is not b for a, b in zip(old, t)):
            return False
    return True


def _parse_check(i: int, t: Any) -> ParsedCheck:
    if isinstance(t, (str, bytes, Mapping)) or not isinstance(t, Sequence):
        raise ValueError(
            f"transforms[{i}]: expected a tuple (f_out, f_in, epsilon, lambda_eq) or (f, epsilon, lambda_eq), "
            f"got {type(t).__name__}"
        )
    if len(t) == 4:
        f_out, f_in, eps, w = t
        parsed_out = _parse_transform(i, f_out, "f_out")
        return ParsedCheck(
            f_in=_parse_transform(i, f_in, "f_in"),
            f_out=parsed_out,
            both=False,
            epsilon=_parse_weight(i, eps, "epsilon"),
            weight=_parse_weight(i, w, "lambda_eq"),
        )
    if len(t) == 3:
        f, eps, w = t
        both = _parse_transform(i, f, "f", both=True)
        return ParsedCheck(
            f_in=both,
            f_out=both,
            both=True,
            epsilon=_parse_weight(i, eps, "epsilon"),
            weight=_parse_weight(i, w, "lambda_eq"),
        )
    raise ValueError(
        f"transforms[{i}]: expected 4 elements (f_out, f_in, epsilon, lambda_eq) or 3 (f, epsilon, lambda_eq), "
        f"got {len(t)}"
    )


def parse_dist(dist: Any) -> Distance:
    """The distance of two output batches, per row (a user's callable: as it returns)."""
    if isinstance(dist, float) and math.isnan(dist):
        raise ValueError("dist: p must be >= 1, got nan")
    try:
        parsed = parse_distance(dist)
    except EqauditError as err:
        raise ValueError(f"dist: {err}") from None
    return per_row_distance(parsed)


def parse_bounds(bounds: Any, shape: tuple[int, ...], n: int) -> tuple[torch.Tensor, bool]:
    """``(tensor with last axis (lo, hi), whether it is exactly the unit box)``."""
    try:
        if isinstance(bounds, torch.Tensor):
            b = bounds.detach().to(device="cpu", dtype=torch.float64)
        else:
            b = torch.as_tensor(bounds, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"bounds must be [lo, hi] or nested lists/an array with a last axis of 2: {exc}") from None
    if b.dim() == 0 or b.shape[-1] != 2:
        raise ValueError(
            f"bounds must have a last axis of size 2 holding (lo, hi), got shape {tuple(b.shape)}"
        )
    try:
        torch.broadcast_shapes(tuple(b.shape), (n, *shape, 2))
    except RuntimeError:
        raise ValueError(
            f"bounds of shape {tuple(b.shape)} do not broadcast to (n,) + shape + (2,) = {(n, *shape, 2)}"
        ) from None
    if not torch.isfinite(b).all():
        raise ValueError("bounds must be finite")
    if not torch.isfinite(b[..., 1] - b[..., 0]).all():
        raise ValueError("bounds: hi - lo overflows (the points would be NaN); use a narrower box")
    if (b[..., 0] > b[..., 1]).any():
        raise ValueError("bounds: lo > hi somewhere")
    unit = bool((b[..., 0] == 0).all() and (b[..., 1] == 1).all())
    return b, unit
