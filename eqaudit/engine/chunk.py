"""One chunk of the audit: draw the points of a range of sample indices, forward them once,
evaluate every check on them (:func:`eqaudit.engine.evaluate.evaluate_checks`) and fold the
per-sample errors into the statistics columns. Nothing is read back to the host (``num_funcs``
reads its per-check row counts once).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from transforms_zoo import SampleRNG

from ..spec import Spec
from .estimator import BlockStats
from .evaluate import CheckErrors, evaluate_checks
from .forward import forward_rows
from .sampling import PointSampler, rows_by_check
from .worst_of import record_columns, worst_columns


def element_columns(spec: Spec) -> dict[int, int]:
    """The statistics column of element 0 of each group check (after one column per check)."""
    cols, nxt = {}, len(spec.checks)
    for j, check in enumerate(spec.checks):
        if check.group is not None:
            cols[j] = nxt
            nxt += check.group.order
    return cols


def _group_columns(spec: Spec) -> int:
    return len(spec.checks) + sum(c.group.order for c in spec.checks if c.group is not None)


def worst_of_columns(spec: Spec) -> dict[int, tuple[int, int]]:
    """The argmax record columns (first, count) of each worst-of check, after the group elements'."""
    return worst_columns(spec.checks, _group_columns(spec))


def n_columns(spec: Spec) -> int:
    """Statistics columns of the checks: one per check, plus one per element of each group check,
    plus the argmax record of each worst-of check."""
    return _group_columns(spec) + sum(count for _, count in worst_of_columns(spec).values())


def copies_per_sample(spec: Spec) -> int:
    """Transformed copies of each sample in the fused forward pass."""
    per_check = [c.group.order if c.group is not None else c.worst_of.k if c.worst_of is not None else 1
                 for c in spec.checks]
    if spec.num_funcs is not None:
        return max(1, sum(sorted(per_check, reverse=True)[: spec.num_funcs]))
    return max(1, sum(per_check))


def measure_chunk(
    model: Any, spec: Spec, sampler: PointSampler, stats: BlockStats, dev: torch.device, start: int, length: int,
    plan: Any = None, max_rows: int | None = None, active: Sequence[int] | None = None,
) -> None:
    """Samples ``start .. start + length - 1``: draw the points, forward them once, evaluate every
    check (their transformed points in one fused batch per input shape; in calls of at most
    ``max_rows`` rows when given), then fold each check's errors into its statistics columns.
    ``active``: the checks to evaluate (default: all; a check that failed is left out)."""
    assert plan is None or max_rows is None, "the layer taps count model calls: one per fused group"
    rng = SampleRNG.for_range(spec.seed, start, start + length, dev)
    valid = rng.index < spec.samples
    x = sampler.draw(rng)
    if plan is not None:
        plan.tap.clear()
    y = forward_rows(model, x, spec, "input.shape", max_rows)
    chosen = list(range(len(spec.checks))) if active is None else list(active)
    rows = None
    if spec.num_funcs is not None:
        k_checks = len(spec.checks)
        rows_of = rows_by_check(rng.child("num_funcs").choice(spec.num_funcs, k_checks), k_checks)
        rows = [rows_of[j] for j in chosen]
    evaluation = evaluate_checks(model, spec.checks, x, y, rng, spec, chosen=chosen, rows=rows, max_rows=max_rows,
                                 untapped=plan.tap.paused if plan is not None else None)
    if plan is not None:
        plan.fold(evaluation.transformed, stats, start, valid, tuple(x.shape[-2:]))
    _fold(spec, evaluation.checks, stats, start, length, valid, dev)


def _fold(spec: Spec, results: list[CheckErrors], stats: BlockStats, start: int, length: int,
          valid: torch.Tensor, dev: torch.device) -> None:
    """Each check's errors into its column (group checks: each element's too); the checks that
    ran on every row in one vectorised update."""
    # a chunk whose rows all count (known on the host) folds without a mask: fewer operators, same bits
    counted = None if start + length <= spec.samples else valid
    whole_rows: list[torch.Tensor] = []
    whole_columns: list[int] = []  # the columns of ``whole_rows``
    first_element = element_columns(spec)
    worst_cols = worst_of_columns(spec)
    for res in results:
        j = res.check_index
        if res.worst is not None:  # the argmax record, beside the check's own column
            first, count = worst_cols[j]
            record = record_columns(spec.checks[j], res.worst)
            if res.rows is None:  # every column of the record in one update
                stats.update(slice(first, first + count), start, record, _wide(counted, record))
            else:
                for c, values in enumerate(record.unbind(1)):
                    _store(stats, first + c, start, values, res.rows, counted, length, dev)
        if res.element_errors is not None:
            for e, errors in enumerate(res.element_errors):
                _store(stats, first_element[j] + e, start, errors, res.rows, counted, length, dev)
        if res.rows is not None or spec.checks[j].group is not None or spec.checks[j].mode == "lie":
            _store(stats, j, start, res.errors, res.rows, counted, length, dev)
        else:
            whole_rows.append(res.errors)
            whole_columns.append(j)
    if whole_rows:
        cols = whole_columns
        if cols == list(range(cols[0], cols[-1] + 1)):
            cols = slice(cols[0], cols[-1] + 1)  # type: ignore[assignment]
        e_all = torch.stack(whole_rows, dim=1)
        stats.update(cols, start, e_all, _wide(counted, e_all))


def _wide(counted: torch.Tensor | None, errors: torch.Tensor) -> torch.Tensor | None:
    """The rows that count, as a mask of the ``(L, K)`` ``errors`` (None: every row counts)."""
    return None if counted is None else counted[:, None].expand_as(errors)


def _store(stats: BlockStats, column: int, start: int, e: torch.Tensor, rows: torch.Tensor | None,
           counted: torch.Tensor | None, length: int, dev: torch.device) -> None:
    """Fold one column's errors (for all rows, or for ``rows`` of the chunk) into the statistics;
    ``counted``: the rows that count (None: all of them)."""
    if rows is None:
        stats.update(column, start, e, counted)
        return
    full = torch.zeros(length, dtype=torch.float64, device=dev)
    full[rows] = e
    mask = torch.zeros(length, dtype=torch.bool, device=dev)
    mask[rows] = True
    stats.update(column, start, full, mask if counted is None else mask & counted)
