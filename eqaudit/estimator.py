"""Streaming Monte Carlo statistics per check, exact under any chunking.

Samples are grouped in fixed blocks of :data:`BLOCK` consecutive indices. For each block and
check the engine stores the count, sum, sum of squared deviations about the block mean, maximum
and the number of non-finite values, on the device, in float64. Blocks never straddle chunks, so
a block's figures do not depend on the batch size; the final reduction over blocks uses
``math.fsum`` (exactly rounded, order-free). The same holds across processes: each fills disjoint
blocks, and summing the block tables (``all_reduce``) gives the single-process result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import torch

BLOCK = 64


@dataclass(frozen=True)
class Summary:
    """Mean, spread and confidence interval of one check's per-sample errors."""

    n: int
    mean: float
    std: float
    stderr: float
    ci_low: float
    ci_high: float
    confidence: float
    max: float
    nonfinite: int


def z_value(confidence: float) -> float:
    """Two-sided normal quantile: 1.959963... for 0.95."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def summarize_values(values: list[float] | torch.Tensor, confidence: float = 0.95) -> Summary:
    """The reference computation on an explicit list of values (two-pass, float64)."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    finite = v[torch.isfinite(v)]
    n = int(finite.numel())
    if n == 0:
        nan = float("nan")
        return Summary(0, nan, nan, nan, nan, nan, confidence, nan, int(v.numel()))
    mean = math.fsum(finite.tolist()) / n
    m2 = math.fsum(((finite - mean) ** 2).tolist())
    return _finish(n, mean, m2, float(finite.max()), int(v.numel()) - n, confidence)


def _finish(n: int, mean: float, m2: float, vmax: float, nonfinite: int, confidence: float) -> Summary:
    std = math.sqrt(m2 / (n - 1)) if n > 1 else 0.0
    stderr = std / math.sqrt(n)
    half = z_value(confidence) * stderr
    return Summary(n, mean, std, stderr, mean - half, mean + half, confidence, vmax, nonfinite)


class BlockStats:
    """Per-block, per-check sufficient statistics for ``n_samples`` samples and ``n_checks`` checks."""

    def __init__(self, n_samples: int, n_checks: int, device: torch.device | str = "cpu") -> None:
        self.n_samples = n_samples
        self.n_checks = n_checks
        n_blocks = max(1, math.ceil(n_samples / BLOCK))
        f64 = dict(dtype=torch.float64, device=device)
        self.count = torch.zeros(n_blocks, n_checks, **f64)
        self.total = torch.zeros(n_blocks, n_checks, **f64)
        self.m2 = torch.zeros(n_blocks, n_checks, **f64)
        self.max = torch.full((n_blocks, n_checks), -math.inf, **f64)
        self.nonfinite = torch.zeros(n_blocks, n_checks, **f64)

    def tables(self) -> list[torch.Tensor]:
        return [self.count, self.total, self.m2, self.max, self.nonfinite]

    def update(self, check: int | slice, start: int, errors: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Fold in the errors of samples ``start .. start + len(errors) - 1``.

        ``errors`` is ``(L,)`` for one check, or ``(L, K)`` with ``check=slice(None)`` for all
        checks at once. ``start`` and ``L`` are multiples of :data:`BLOCK` (the engine pads the
        last chunk); ``mask`` (same shape) marks which rows count (samples past the end, or not
        selected by ``num_funcs``, do not).
        """
        length = errors.shape[0]
        if start % BLOCK or length % BLOCK:
            raise ValueError("chunks must start and end on block boundaries")
        e = errors.to(torch.float64).reshape(-1, BLOCK, *errors.shape[1:])
        finite = torch.isfinite(e)
        use = finite if mask is None else mask.reshape(e.shape) & finite
        w = use.to(torch.float64)
        e0 = torch.where(use, e, 0.0)
        count = w.sum(dim=1)
        total = e0.sum(dim=1)
        mean = total / count.clamp(min=1.0)
        m2 = (w * (e0 - mean.unsqueeze(1)) ** 2).sum(dim=1)
        vmax = torch.where(use, e, -math.inf).amax(dim=1)
        bad = (~finite if mask is None else mask.reshape(e.shape) & ~finite).to(torch.float64).sum(dim=1)
        b0 = start // BLOCK
        n_rows = min(e.shape[0], self.count.shape[0] - b0)  # padding past the last block is empty
        rows = slice(b0, b0 + n_rows)
        for table, value in zip(self.tables(), (count, total, m2, vmax, bad)):
            table[rows, check] = value[:n_rows]

    def summary(self, check: int, confidence: float = 0.95) -> Summary:
        """Combine the blocks of one check (law of total variance, exactly rounded sums)."""
        return self.summaries(confidence)[check]

    def summaries(self, confidence: float = 0.95) -> list[Summary]:
        """Every check's summary, reading the tables from the device once."""
        tables = [t.cpu() for t in self.tables()]
        return [self._summary(tables, j, confidence) for j in range(self.n_checks)]

    def _summary(self, tables: list[torch.Tensor], check: int, confidence: float) -> Summary:
        count, total, m2 = (t[:, check].tolist() for t in tables[:3])
        vmax = float(tables[3][:, check].max())
        nonfinite = int(tables[4][:, check].sum())
        n = int(math.fsum(count))
        if n == 0:
            nan = float("nan")
            return Summary(0, nan, nan, nan, nan, nan, confidence, nan, nonfinite)
        mean = math.fsum(total) / n
        between = math.fsum(c * (t / c - mean) ** 2 for c, t in zip(count, total) if c > 0)
        return _finish(n, mean, math.fsum(m2) + between, vmax, nonfinite, confidence)
