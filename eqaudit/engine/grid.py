"""This process's share of the audit's chunk grid: each chunk measured by
:func:`eqaudit.engine.chunk.measure_chunk`, halved on out-of-memory, and a check that fails left
out of the later chunks (its error is reported as the check's row)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ArgumentError, EqauditError, first_line
from ..spec import Spec
from . import chunk
from .chunking import round_up
from .distributed import World
from .estimator import BLOCK, BlockStats
from .forward import is_oom
from .layers import LayerPlan
from .sampling import PointSampler

Progress = Callable[[int, int], None]


@dataclass
class ChunkGrid:
    """This process's share of the chunk grid, with out-of-memory backoff."""

    model: Any  # as the chunks call it (compiled, under autocast)
    world: World
    dev: torch.device
    plan: LayerPlan | None
    sampler: PointSampler
    chunk_size: int
    fixed: bool  # the caller chose the batch size: out of memory is an error, not a backoff
    progress: Progress | None
    max_rows: int | None
    #: Checks that could not be measured, with their error (reported as error rows).
    failed: dict[int, str] = field(default_factory=dict)
    #: The first sample index of the chunk where each check of ``failed`` failed (processes keep
    #: the message of the earliest chunk, as one process measuring them in order does).
    failed_at: dict[int, int] = field(default_factory=dict)
    #: The process that takes the first chunk of the next :meth:`run` (each round of sequential
    #: sampling starts where the last one's process left off, see :meth:`run`).
    first_rank: int = 0

    def active(self, spec: Spec) -> list[int] | None:
        """The checks still measured (None: all)."""
        return [j for j in range(len(spec.checks)) if j not in self.failed] if self.failed else None

    def measure(self, spec: Spec, stats: BlockStats, start: int, length: int, active: list[int] | None) -> None:
        chunk.measure_chunk(self.model, spec, self.sampler, stats, self.dev, start, length, self.plan, self.max_rows,
                            active)

    def drop_failed_check(self, spec: Spec, stats: BlockStats, start: int, length: int, exc: Exception) -> None:
        """Record a failure of one check (an error at its key, or an unexpected error that the
        check alone reproduces, located at its key); any other failure ends the audit."""
        if isinstance(exc, EqauditError):
            m = re.match(r"checks\[(\d+)\]", exc.key or "")
            j = int(m.group(1)) if m is not None else None
            if j is None or j in self.failed or j >= len(spec.checks):
                raise exc
            self.failed[j], self.failed_at[j] = str(exc), start
            return
        try:
            self.measure(spec, stats, start, length, [])  # the points and the base forward alone
        except Exception:
            raise exc from None  # not one check's failure
        for j in self.active(spec) or range(len(spec.checks)):
            try:
                self.measure(spec, stats, start, length, [j])
            except Exception as alone:
                if is_oom(alone) or type(alone) is not type(exc):
                    raise exc from None
                self.failed[j], self.failed_at[j] = str(spec.error(f"checks[{j}]", first_line(alone))), start
                return
        raise exc

    def run(self, spec: Spec, stats: BlockStats, begin: int = 0) -> int:
        """Process the chunks from ``begin``. On out-of-memory a chunk is processed in halves (the
        grid, hence the split across processes, stays the same), and later chunks use the smaller
        size; with a fixed batch size it is an error instead. Returns the size last used."""
        n, world, dev = spec.samples, self.world, self.dev
        starts = list(range(begin, n, self.chunk_size))
        step = self.chunk_size
        samples_done = begin
        mine = [s for i, s in enumerate(starts) if (self.first_rank + i) % world.size == world.rank]
        # A next round redoes the partial block at the end of this one whole: it goes to the process
        # that folded that block's first samples (per-channel sums are that process's own).
        self.first_rank = (self.first_rank + ((n // BLOCK) * BLOCK - begin) // self.chunk_size) % world.size
        for start in mine:
            end = min(start + self.chunk_size, round_up(n, BLOCK))
            pos = start
            while pos < end:
                length = min(step, end - pos)
                try:
                    self.measure(spec, stats, pos, length, self.active(spec))
                except Exception as exc:
                    if not is_oom(exc):
                        self.drop_failed_check(spec, stats, pos, length, exc)
                        if len(self.failed) == len(spec.checks):
                            return step  # nothing left to measure
                        continue  # the same chunk again, without the check that failed
                    if step <= BLOCK:
                        raise
                    if self.fixed:
                        raise ArgumentError("batch_size", f"out of memory with batch_size {self.chunk_size}",
                                            hint="use a smaller batch size or omit it") from None
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
                    step = max(BLOCK, (step // 2 // BLOCK) * BLOCK)
                    continue
                pos += length
                samples_done += min(length, max(0, n - (pos - length)))
                if self.progress is not None:
                    self.progress(min(samples_done * world.size, n), n)
        return step
