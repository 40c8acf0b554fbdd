"""Worst-of-K checks (``worst_of:``): the K draws of a check as K columns of the one fused
evaluation (each draw's parameters from its own stream, keyed by (seed, sample, k)), their
per-sample maximum, which draw gave it, and the statistics columns that record the argmax."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from transforms_zoo import SampleRNG, Transform


@dataclass(frozen=True)
class Draw:
    """Draw ``k`` of a worst-of check: its transforms and its random stream."""

    k: int
    t_in: Transform
    t_out: Transform
    rng: SampleRNG


def draws(check: Any, rng: SampleRNG) -> Iterator[Draw]:
    """The check's draws: its own transforms with K independent streams, or the grid's input
    transforms (the same one on the outputs under ``both``)."""
    worst = check.worst_of
    for k in range(worst.k):
        stream = rng.child(f"worst_of:{k}")
        if worst.param is None:
            yield Draw(k, check.input, check.output, stream)
        else:
            t_in = worst.transforms[k]
            yield Draw(k, t_in, t_in if check.both else check.output, stream)


@dataclass(frozen=True)
class Worst:
    """Per row: the largest error over the draws, the first draw that reached it, and that draw's
    parameter value (the grid value, or a drawn parameter with one number per row; else None)."""

    errors: torch.Tensor
    argmax: torch.Tensor
    value: torch.Tensor | None


def combine(check: Any, errors: Sequence[torch.Tensor], params: Sequence[Any]) -> Worst:
    """The per-row maximum of the draws' errors (NaN wins, so a non-finite draw is refused) and
    its argmax (the first draw among ties)."""
    table = torch.stack(list(errors), dim=1)
    nan = torch.isnan(table)
    arg = torch.where(nan.any(dim=1), nan.to(torch.int64).argmax(dim=1), torch.nan_to_num(table, nan=0.0).argmax(dim=1))
    worst = table.gather(1, arg[:, None]).squeeze(1)
    return Worst(worst, arg, _argmax_values(check, arg, params, table))


def _argmax_values(check: Any, arg: torch.Tensor, params: Sequence[Any], like: torch.Tensor) -> torch.Tensor | None:
    n = arg.shape[0]
    if check.worst_of.param is not None:
        grid = torch.tensor(check.worst_of.values, dtype=torch.float64, device=arg.device)
        return grid[arg]
    if not all(isinstance(p, torch.Tensor) and p.dim() == 1 and p.shape[0] == n and not p.is_complex()
               for p in params):
        return None
    drawn = torch.stack([p.to(device=arg.device, dtype=torch.float64) for p in params], dim=1)
    return drawn.gather(1, arg[:, None]).squeeze(1)


def worst_columns(checks: Sequence[Any], first: int) -> dict[int, tuple[int, int]]:
    """Check ``j`` -> (first statistics column, count) of its argmax record, from column ``first``
    on: one indicator column per grid point (its mean is the fraction of samples whose worst
    value it is), or one column of the worst draw's parameter value."""
    cols, nxt = {}, first
    for j, check in enumerate(checks):
        if check.worst_of is not None:
            count = check.worst_of.k if check.worst_of.param is not None else 1
            cols[j] = (nxt, count)
            nxt += count
    return cols


def record_columns(check: Any, worst: Worst) -> torch.Tensor:
    """The argmax record's values per row (``(n, count)``; NaN where there is no value)."""
    if check.worst_of.param is not None:
        hits = torch.zeros(worst.argmax.shape[0], check.worst_of.k, dtype=torch.float64, device=worst.argmax.device)
        return hits.scatter_(1, worst.argmax[:, None], 1.0)
    if worst.value is None:
        return torch.full((worst.argmax.shape[0], 1), math.nan, dtype=torch.float64, device=worst.argmax.device)
    return worst.value[:, None]


def report_entry(check: Any, summaries: Sequence[Any], columns: tuple[int, int]) -> dict[str, Any]:
    """The JSON ``worst_of`` entry of a check: K, the grid parameter, and where the maximum was:
    the argmax histogram over the grid, or a summary of the worst draws' parameter values."""
    worst, (first, count) = check.worst_of, columns
    entry: dict[str, Any] = {"k": worst.k, "param": worst.param}
    if worst.param is not None:
        hist = []
        for value, s in zip(worst.values, summaries[first: first + count]):
            hits = round(s.mean * s.n) if s.n else 0
            hist.append({"value": value, "count": hits, "fraction": hits / s.n if s.n else None})
        entry["argmax"] = hist
        return entry
    s = summaries[first]
    if s.n:
        entry["argmax_value"] = {key: _finite(getattr(s, key)) for key in ("n", "mean", "std", "max", "p50", "p95")}
    return entry


def _finite(v: Any) -> Any:
    return v if not isinstance(v, float) or math.isfinite(v) else None
