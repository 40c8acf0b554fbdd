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

    def update(self, check: int, start: int, errors: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Fold in the errors of samples ``start .. start + len(errors) - 1`` for one check.

        ``start`` and ``len(errors)`` are multiples of :data:`BLOCK` (the engine pads the last
        chunk); ``mask`` marks which rows count (samples past the end, or not selected by
        ``num_funcs``, do not).
        """
        length = errors.shape[0]
        if start % BLOCK or length % BLOCK:
            raise ValueError("chunks must start and end on block boundaries")
        e = errors.to(torch.float64).reshape(-1, BLOCK)
        valid = torch.ones_like(e, dtype=torch.bool) if mask is None else mask.reshape(-1, BLOCK)
        finite = torch.isfinite(e)
        use = valid & finite
        w = use.to(torch.float64)
        e0 = torch.where(use, e, torch.zeros_like(e))
        count = w.sum(dim=1)
        total = e0.sum(dim=1)
        mean = total / count.clamp(min=1.0)
        m2 = (w * (e0 - mean[:, None]) ** 2).sum(dim=1)
        vmax = torch.where(use, e, torch.full_like(e, -math.inf)).amax(dim=1)
        bad = (valid & ~finite).to(torch.float64).sum(dim=1)
        b0 = start // BLOCK
        rows = slice(b0, b0 + e.shape[0])
        n_rows = self.count.shape[0] - b0
        if e.shape[0] > n_rows:  # padding past the last block carries no valid rows
            count, total, m2, vmax, bad = (t[:n_rows] for t in (count, total, m2, vmax, bad))
            rows = slice(b0, b0 + n_rows)
        self.count[rows, check] = count
        self.total[rows, check] = total
        self.m2[rows, check] = m2
        self.max[rows, check] = vmax
        self.nonfinite[rows, check] = bad

    def summary(self, check: int, confidence: float = 0.95) -> Summary:
        """Combine the blocks of one check (law of total variance, exactly rounded sums)."""
        count = self.count[:, check].cpu().tolist()
        total = self.total[:, check].cpu().tolist()
        m2 = self.m2[:, check].cpu().tolist()
        vmax = float(self.max[:, check].max().cpu())
        nonfinite = int(self.nonfinite[:, check].sum().cpu())
        n = int(math.fsum(count))
        if n == 0:
            nan = float("nan")
            return Summary(0, nan, nan, nan, nan, nan, confidence, nan, nonfinite)
        mean = math.fsum(total) / n
        between = math.fsum(c * (t / c - mean) ** 2 for c, t in zip(count, total) if c > 0)
        return _finish(n, mean, math.fsum(m2) + between, vmax, nonfinite, confidence)
