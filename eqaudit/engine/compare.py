"""Comparing the two sides of a check: per-sample distances, computed in float64 for the audit
(complex outputs in complex128: never cut to their real part) or in the outputs' dtype for
gradients, with failures located at the check's ``distance`` key."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import first_line
from .distances import Distance
from .forward import Locator, is_oom


def check_distance(checks: Sequence[Any], locate: Locator, j: int, a: torch.Tensor, b: torch.Tensor,
                   dtype: torch.dtype | None) -> torch.Tensor:
    """Check ``j``'s per-row distances (shape ``(n,)``), failures located at its key."""
    check = checks[j]
    try:
        if dtype is None:
            e = check.distance(a, b.to(a.dtype))
        else:
            e = check.distance(widened(a, dtype), widened(b, dtype))
    except Exception as exc:
        if is_oom(exc):
            raise  # the chunk loop backs off to a smaller chunk
        located = getattr(exc, "located", None)
        if located is not None:  # an EqauditError: keep its message, add where
            raise located(file=locate.file, key=f"checks[{j}].distance") from None
        raise locate.error(f"checks[{j}].distance",
                                f"distance '{check.distance.name}' failed: {first_line(exc)}") from None
    e = e.reshape(-1)
    if e.is_complex() or (dtype is not None and e.shape[0] != a.shape[0]):  # None: the regularizer's mean
        what = "complex values" if e.is_complex() else f"{e.shape[0]} values"
        raise locate.error(f"checks[{j}].distance", f"distance '{check.distance.name}' returned {what} for "
                                f"a batch of {a.shape[0]}", "a distance returns one real number per sample")
    return e if dtype is None else e.to(dtype)

def batched_distances(checks: Sequence[Any], locate: Locator, indices: list[int],
                      pairs: list[tuple[torch.Tensor, torch.Tensor]], dtype: torch.dtype | None) -> list[torch.Tensor]:
    """Per-row distances of every pair: pairs with the same built-in distance and output shape
    are computed in one call on their concatenation (the distances are row-wise, so the values
    are those of separate calls; a user's callable always sees its own check's rows)."""
    out: list[torch.Tensor | None] = [None] * len(pairs)
    batches: dict[tuple[Any, ...], list[int]] = {}
    for i, (j, (a, b)) in enumerate(zip(indices, pairs)):
        dist = checks[j].distance
        if isinstance(dist, Distance) and dist.batchable:
            batches.setdefault((dist.name, tuple(a.shape[1:]), a.dtype, b.dtype), []).append(i)
        else:
            out[i] = check_distance(checks, locate, j, a, b, dtype)
    for members in batches.values():
        first = indices[members[0]]
        if len(members) == 1:
            out[members[0]] = check_distance(checks, locate, first, *pairs[members[0]], dtype)
            continue
        a = torch.cat([pairs[i][0] for i in members])
        b = torch.cat([pairs[i][1] for i in members])
        try:
            e = check_distance(checks, locate, first, a, b, dtype)
        except Exception as exc:
            if not is_oom(exc):
                for i in members:  # name the check whose outputs the distance rejects
                    check_distance(checks, locate, indices[i], *pairs[i], dtype)
            raise
        for i, part in zip(members, torch.split(e, [pairs[i][0].shape[0] for i in members])):
            out[i] = part
    return out  # type: ignore[return-value]


def widened(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype``, or, when ``t`` is complex and ``dtype`` real, in the complex dtype of
    that precision (complex outputs are compared as complex numbers, never cut to their real part)."""
    if t.is_complex() and not dtype.is_complex:
        dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    return t.to(dtype)
