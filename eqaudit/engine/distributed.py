"""Splitting an audit across processes (``torchrun``) and reducing the per-block statistics.

Each process takes every ``world``-th chunk of the same chunk grid; the block tables are
disjoint between processes, so summing them (``all_reduce``) gives exactly the single-process
tables, hence the same report.
"""

from __future__ import annotations

import atexit
import math
import os
from dataclasses import dataclass

import torch

from ..errors import EqauditError
from .estimator import BlockStats


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when the environment says several processes were started (``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def current_world(device: torch.device | None = None) -> World:
    """The process group, initialised from the torchrun environment when needed
    (gloo on CPU, nccl on CUDA); a single process gets ``World()``."""
    import torch.distributed as dist

    if not launched_by_torchrun():
        if dist.is_available() and dist.is_initialized():
            return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
        return World()
    if not dist.is_available():
        raise EqauditError("this torch build has no torch.distributed", key="WORLD_SIZE")
    if not dist.is_initialized():
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend)
        except Exception as exc:  # bad MASTER_ADDR/PORT, ...
            raise EqauditError(f"cannot join the process group: {exc}", key="WORLD_SIZE") from None
        if backend == "gloo":  # see _leave_process_group
            atexit.register(_leave_process_group)
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _leave_process_group() -> None:
    """Destroy the gloo process group this module created while the interpreter is still whole:
    left to interpreter shutdown, gloo's worker threads can abort the process (SIGABRT,
    "terminate called without an active exception") after the report was written, and torchrun
    then calls the run failed. Destroying a gloo group is local (no collective), so a process
    that exits on an error does not wait for the others here."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def reduce_stats(stats: BlockStats, world: World) -> None:
    """Sum the block tables of every process (max for the maxima and the kept values), in place,
    on all ranks: one SUM and one MAX over all of them (each process filled disjoint blocks and
    rows, so adding zeros and taking maxima over fillers leaves each value as its process had it)."""
    if world.size == 1:
        return
    import torch.distributed as dist

    # gloo has no float64 reduction on CUDA tensors; nccl needs them on the GPU.
    where = stats.values.device if dist.get_backend() == "nccl" else torch.device("cpu")
    summed_tables = (stats.count, stats.total, stats.m2, stats.nonfinite)
    # Maxima: a block another process filled is -inf here, which MAX passes over; a maximum may be
    # negative (a distance callable need not be >= 0), so -inf is the only filler. Kept per-sample
    # values (quantiles): disjoint rows per process, NaN elsewhere, sent as -inf.
    values = torch.where(torch.isnan(stats.values), -math.inf, stats.values)
    summed = torch.cat([t.reshape(-1) for t in summed_tables]).to(where)
    top = torch.cat([stats.max.reshape(-1), values.reshape(-1)]).to(where)
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    dist.all_reduce(top, op=dist.ReduceOp.MAX)
    for table, part in zip(summed_tables, summed.split([t.numel() for t in summed_tables])):
        table.copy_(part.reshape(table.shape))
    top_max, top_values = top.split([stats.max.numel(), values.numel()])
    stats.max.copy_(top_max.reshape(stats.max.shape))
    stats.values.copy_(torch.where(torch.isinf(top_values) & (top_values < 0), math.nan, top_values)
                       .reshape(stats.values.shape))


def least_across(value: int | None, world: World) -> int | None:
    """The least of ``value`` over the processes of ``world``, None where every process has None
    (``value`` itself in a single process). A collective: every process calls it."""
    if world.size == 1:
        return value
    import torch.distributed as dist

    gathered: list[int | None] = [None] * world.size
    dist.all_gather_object(gathered, value)
    known = [int(v) for v in gathered if v is not None]
    return min(known) if known else None


def merged_failures(failed: dict[int, str], world: World, at: dict[int, int] | None = None) -> dict[int, str]:
    """The checks that failed in any process, each with one message, the same on every rank (a
    single process gets ``failed`` itself). ``at`` gives the sample index of the chunk where each
    check of ``failed`` failed: the message kept is then the one of the lowest index, which a
    single process, measuring the chunks in order, reports too; without it (or on a tie), the
    lowest rank's."""
    if world.size == 1:
        return failed
    import torch.distributed as dist

    gathered: list[tuple[dict[int, str], dict[int, int]] | None] = [None] * world.size
    dist.all_gather_object(gathered, (failed, dict(at or {})))
    merged: dict[int, tuple[float, str]] = {}
    for part in gathered:
        messages, where = part if part is not None else ({}, {})
        for j, message in messages.items():
            first = float(where.get(j, math.inf))
            if j not in merged or first < merged[j][0]:
                merged[j] = (first, message)
    return {j: merged[j][1] for j in sorted(merged)}
