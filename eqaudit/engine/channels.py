"""Per-channel attribution (``layers: {per_channel: true}``): each channel's error and its
normalized-variance invariance measure, accumulated over the chunks of one (check, layer) pair.

For sample ``i`` with the check's draw ``t_i``, the two aligned maps of channel ``c`` are
``A[i, 0] = t_i(feature_c(x_i))`` (the base map moved by the transform) and
``A[i, 1] = feature_c(t_i(x_i))`` (the map of the moved input). Over the ``P`` positions ``p``:

- ``error_c``: the mean over samples of ``relative_l2(A[i, 0], A[i, 1])`` (the per-layer distance,
  on one channel's map);
- ``transform_variance_c = mean_{i, p} Var_k A[i, k, p] = mean_{i, p} (A[i,0,p] - A[i,1,p])^2 / 4``
  (the variance over the two transform conditions, identity and the draw);
- ``sample_variance_c = mean_{k, p} Var_i A[i, k, p]`` (the variance over samples, per condition);
- ``normalized_variance_c = transform_variance_c / sample_variance_c`` (Quiroga et al.'s normalized
  variance, as in the ``tmeasures`` library; null when the sample variance is 0).

Variances are population variances (divided by the count). Sums are kept in float64 on the
device (nothing is read back until the report) and summed across processes under torchrun.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .distances import relative_l2
from .distributed import World


class ChannelStats:
    """Per-channel sums of one (check, layer) pair over the samples folded so far."""

    def __init__(self) -> None:
        self.n: torch.Tensor | None = None  # samples folded
        self.error_sum: torch.Tensor | None = None  # (C,)
        self.error_max: torch.Tensor | None = None  # (C,)
        self.tv_sum: torch.Tensor | None = None  # (C,) sum over samples and positions of (a - b)^2 / 4
        self.s1: torch.Tensor | None = None  # (2, C, *map) sums of the aligned maps
        self.s2: torch.Tensor | None = None  # (2, C, *map) sums of their squares
        #: the sample indices folded so far: a block redone by ``--precision EPS`` is not counted twice
        self.done = torch.zeros(0, dtype=torch.bool)

    def fold(self, expected: torch.Tensor, moved: torch.Tensor, keep: torch.Tensor, start: int) -> None:
        """Add the samples ``keep`` of the aligned maps ``expected`` and ``moved`` (N, C, ...), the
        chunk's rows being sample indices ``start, start + 1, ...`` (those folded before are skipped)."""
        a, b = expected.to(torch.float64), moved.to(torch.float64)
        n, c = a.shape[0], a.shape[1]
        if self.done.device != keep.device or self.done.numel() < start + n:
            grown = torch.zeros(max(start + n, 2 * self.done.numel()), dtype=torch.bool, device=keep.device)
            grown[: self.done.numel()] = self.done.to(keep.device)
            self.done = grown
        keep = keep & ~self.done[start : start + n]
        self.done[start : start + n] |= keep
        w = keep.to(torch.float64)
        errors = relative_l2(a.reshape(n * c, -1), b.reshape(n * c, -1)).reshape(n, c)
        errors = torch.where(keep[:, None], errors, torch.zeros_like(errors))
        kb = keep.reshape(n, *([1] * (a.dim() - 1)))  # broadcast over the map
        a, b = torch.where(kb, a, torch.zeros_like(a)), torch.where(kb, b, torch.zeros_like(b))  # others: 0
        tv = ((a - b) ** 2 / 4).reshape(n, c, -1).sum(dim=2)
        parts = {"n": w.sum(), "error_sum": errors.sum(dim=0), "tv_sum": tv.sum(dim=0),
                 "s1": torch.stack([a.sum(dim=0), b.sum(dim=0)]),
                 "s2": torch.stack([(a * a).sum(dim=0), (b * b).sum(dim=0)])}
        for key, value in parts.items():
            old = getattr(self, key)
            setattr(self, key, value if old is None else old + value)
        top = errors.max(dim=0).values
        self.error_max = top if self.error_max is None else torch.maximum(self.error_max, top)

    def shape(self) -> tuple[int, ...] | None:
        """The shape of the sums of the aligned maps, ``(2, C, *map)`` (None before any fold)."""
        return tuple(self.s1.shape) if self.s1 is not None else None

    def sums(self) -> list[torch.Tensor]:
        """The summed parts, flattened, in a fixed order (``error_max`` apart: it is a maximum)."""
        return [t.reshape(-1) for t in (self.n, self.error_sum, self.tv_sum, self.s1, self.s2)]  # type: ignore[union-attr]

    @classmethod
    def empty(cls, shape: tuple[int, ...], device: torch.device) -> ChannelStats:
        """Sums of no sample for maps of ``shape`` (``(2, C, *map)``): what a process that folded
        none of a pair's samples contributes to the sum across processes."""
        stats, c = cls(), shape[1]
        f64 = dict(dtype=torch.float64, device=device)
        stats.n, stats.error_sum, stats.tv_sum = torch.zeros((), **f64), torch.zeros(c, **f64), torch.zeros(c, **f64)
        stats.s1, stats.s2 = torch.zeros(shape, **f64), torch.zeros(shape, **f64)
        stats.error_max = torch.full((c,), -math.inf, **f64)
        return stats

    def assign(self, summed: torch.Tensor, top: torch.Tensor) -> None:
        """Set the parts from ``summed`` (laid out as :meth:`sums`) and ``error_max`` from ``top``."""
        parts = self.sums()
        pieces = summed.split([p.numel() for p in parts])
        for key, old, new in zip(("n", "error_sum", "tv_sum", "s1", "s2"), parts, pieces):
            setattr(self, key, new.reshape(getattr(self, key).shape).to(old.device))
        self.error_max = top.to(self.error_max.device)  # type: ignore[union-attr]

    def row(self) -> dict[str, list[float | None]] | None:
        """The report's ``channels`` object (None when no sample was folded)."""
        if self.n is None or float(self.n) == 0:
            return None
        n = float(self.n)
        positions = self.s1[0, 0].numel()  # type: ignore[index]
        mean = self.s1 / n  # type: ignore[operator]
        sample_var = (self.s2 / n - mean * mean).clamp_min(0.0)  # type: ignore[operator]
        sample_var = sample_var.transpose(0, 1).reshape(mean.shape[1], -1).mean(dim=1)
        transform_var = self.tv_sum / (n * positions)  # type: ignore[operator]
        normalized = [t / s if s > 0 else None for t, s in zip(transform_var.tolist(), sample_var.tolist())]
        return {"error": _floats(self.error_sum / n), "error_max": _floats(self.error_max),  # type: ignore[operator]
                "transform_variance": _floats(transform_var), "sample_variance": _floats(sample_var),
                "normalized_variance": normalized}


def _floats(t: torch.Tensor) -> list[float | None]:
    """Host floats, None for non-finite values (JSON has no NaN)."""
    return [v if math.isfinite(v) else None for v in t.tolist()]


class ChannelTable:
    """The :class:`ChannelStats` of every (check, layer) pair of a run."""

    def __init__(self) -> None:
        self.stats: dict[tuple[int, str], ChannelStats] = {}

    def fold(self, j: int, name: str, maps: tuple[torch.Tensor, torch.Tensor], keep: torch.Tensor,
             start: int) -> None:
        """Fold check ``j``'s aligned maps at layer ``name`` (outputs with channels: ``(N, C, ...)``),
        of the samples ``start, start + 1, ...``."""
        if maps[0].dim() < 3:
            return
        self.stats.setdefault((j, name), ChannelStats()).fold(*maps, keep, start)

    def reduce(self, world: World) -> None:
        """Sum (max for the maxima) every pair's sums over the processes, in place; a collective:
        every process calls it once, after its chunks (:meth:`eqaudit.engine.layers.LayerPlan.reduce`),
        whichever pairs it folded (a process that got no chunk, or whose chunks a check failed in,
        has fewer pairs or none). No-op in one process."""
        if world.size == 1:
            return
        import torch.distributed as dist

        shapes = {key: shape for key, stats in self.stats.items() if (shape := stats.shape()) is not None}
        gathered: list[dict[tuple[int, str], tuple[int, ...]] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, shapes)
        union: dict[tuple[int, str], tuple[int, ...]] = {}
        for part in gathered:
            for key, shape in (part or {}).items():
                if union.setdefault(key, shape) != shape:
                    raise RuntimeError(f"layer {key[1]!r} gives maps of shape {list(shape[1:])} in one "
                                       f"process and {list(union[key][1:])} in another")
        if not union:
            return
        nccl = dist.get_backend() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        for key in union:
            if key not in shapes:
                self.stats[key] = ChannelStats.empty(union[key], device)
        order = sorted(union)  # the same on every process
        # One SUM and one MAX over every pair at once (gloo reduces CPU tensors: float64 on CUDA is not one of its ops).
        sums = [self.stats[key].sums() for key in order]
        tops = [self.stats[key].error_max for key in order]
        summed = torch.cat([t.to(device) for parts in sums for t in parts])
        top = torch.cat([t.to(device) for t in tops])  # type: ignore[union-attr]
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
        pieces = zip(summed.split([sum(t.numel() for t in parts) for parts in sums]),
                     top.split([t.numel() for t in tops]))  # type: ignore[union-attr]
        for key, (part, most) in zip(order, pieces):
            self.stats[key].assign(part, most)

    def row(self, j: int, name: str) -> dict[str, Any] | None:
        """The ``channels`` object of check ``j`` at layer ``name`` (every process's samples, once
        :meth:`reduce` has summed them)."""
        stats = self.stats.get((j, name))
        return stats.row() if stats is not None else None
