"""Streaming Monte Carlo statistics per check, exact under any chunking.

Samples are grouped in fixed blocks of :data:`BLOCK` consecutive indices. For each block and
check the engine stores the count, sum, sum of squared deviations about the block mean, maximum
and the number of non-finite values, on the device, in float64. Blocks never straddle chunks, so
a block's figures do not depend on the batch size; the final reduction over blocks uses
``math.fsum`` (exactly rounded, order-free). The same holds across processes: each fills disjoint
blocks, and summing the block tables (``all_reduce``) gives the single-process result.

Tail quantiles (p50, p95, p99) need the values themselves: the per-sample errors of the first
:data:`QUANTILE_CAP` sample indices are kept in a ``(min(samples, cap), checks)`` float64 buffer
indexed by sample index, so the quantiles are exact when ``samples <= cap`` and, above it, those
of a fixed subsample (the first ``cap`` indices, i.i.d. like all the others); either way they do
not depend on the chunking.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import torch

BLOCK = 64
#: Per-sample errors kept for the quantiles (per check): the first this many sample indices.
QUANTILE_CAP = 1 << 14
QUANTILES = (0.5, 0.95, 0.99)


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
    p50: float = math.nan
    p95: float = math.nan
    p99: float = math.nan
    quantile_n: int = 0  # how many values the quantiles were computed from
    #: How ``ci_low``/``ci_high`` were computed: ``normal`` (mean +- z stderr) or ``wilson``.
    interval: str = "normal"
    #: Every error seen was 0 or 1 (see :func:`_all_binary`): a proportion, fit for :meth:`as_proportion`.
    binary: bool = False

    @classmethod
    def empty(cls, confidence: float, nonfinite: int = 0) -> Summary:
        """The summary of no finite error (``nonfinite``: how many were not finite): every figure NaN."""
        nan = math.nan
        return cls(0, nan, nan, nan, nan, nan, confidence, nan, nonfinite)

    def figures(self) -> dict[str, Any]:
        """The figures a report shows of the check: every field but the count of non-finite errors
        (which, when not 0, refuses the estimate instead) and the ``binary`` flag."""
        hidden = ("nonfinite", "binary")
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in hidden}

    def as_proportion(self) -> Summary:
        """The same figures with the Wilson score interval of the proportion ``mean`` (for 0/1
        errors: correct at 0% and 100%, where the normal interval collapses to a point)."""
        if self.n == 0:
            return self
        low, high = wilson_interval(self.mean * self.n, self.n, self.confidence)
        return dataclasses.replace(self, ci_low=low, ci_high=high, interval="wilson")

    @property
    def half_width(self) -> float:
        """Half the width of the confidence interval."""
        return (self.ci_high - self.ci_low) / 2.0


def z_value(confidence: float) -> float:
    """Two-sided normal quantile: 1.959963... for 0.95."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n`` at ``confidence``:
    ``(p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)``, inside [0, 1]."""
    if n < 1:
        raise ValueError(f"a proportion needs n >= 1, got {n}")
    z, p = z_value(confidence), successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(0.0, p * (1.0 - p)) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _all_binary(s: Summary, zero_one: bool) -> bool:
    """Whether the errors are all 0 or 1: the kept values (the quantile buffer) are
    (``zero_one``, see :func:`_zero_one_columns`), and the spread is that of a 0/1 variable (for
    values in [0, 1], the sum of squared deviations is ``n p (1 - p)`` exactly when each is 0 or
    1, and less otherwise)."""
    if s.n == 0 or s.nonfinite or not zero_one:
        return False
    m2 = (s.n - 1) * s.std * s.std if s.n > 1 else 0.0
    return 0.0 <= s.mean <= 1.0 and abs(s.n * s.mean * (1.0 - s.mean) - m2) <= 1e-9 * s.n


def _zero_one_columns(values: torch.Tensor) -> list[bool]:
    """Per column of ``values`` (``(n, k)``, NaN: not kept): every kept value is 0 or 1 (one
    vectorised test for all columns)."""
    return ((values == 0) | (values == 1) | torch.isnan(values)).all(dim=0).tolist()


def summarize_values(values: list[float] | torch.Tensor, confidence: float = 0.95) -> Summary:
    """The reference computation on an explicit list of values (two-pass, float64)."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    finite = v[torch.isfinite(v)]
    n = int(finite.numel())
    if n == 0:
        return Summary.empty(confidence, int(v.numel()))
    mean = math.fsum(finite.tolist()) / n
    m2 = math.fsum(((finite - mean) ** 2).tolist())
    return _finish(n, mean, m2, float(finite.max()), int(v.numel()) - n, confidence, quantiles(finite))


def quantiles(values: torch.Tensor) -> tuple[float, float, float, int]:
    """(p50, p95, p99, count) of the finite values (linear interpolation, as numpy's default)."""
    v = values.to(torch.float64).flatten()
    v = v[torch.isfinite(v)]
    return column_quantiles(v[:, None])[0]


def column_quantiles(values: torch.Tensor) -> list[tuple[float, float, float, int]]:
    """:func:`quantiles` of each column of ``values`` (``(n, k)``; NaN marks a missing value).

    Equal to ``torch.quantile`` bit for bit (the same ranks, order statistics and ``lerp``), but
    by selection (see :func:`_order_quantiles`) instead of a full sort."""
    cols = values.to(torch.float64).t()
    present = ~torch.isnan(cols)
    counts = present.sum(dim=1).tolist()
    if counts and all(c == cols.shape[1] for c in counts):  # no gaps: every column at once
        return _order_quantiles(cols.contiguous(), cols.shape[1])
    return [_order_quantiles(cols[j][present[j]][None, :], n)[0] for j, n in enumerate(counts)]


def _order_quantiles(rows: torch.Tensor, n: int) -> list[tuple[float, float, float, int]]:
    """Quantiles of each row of ``rows`` (``(k, n)``, all values present): the order statistics
    around each rank ``q (n - 1)`` (see :func:`_order_statistics`), then
    ``lerp`` with the rank's fraction, as ``torch.quantile`` does."""
    k = rows.shape[0]
    if n == 0:
        return [(math.nan, math.nan, math.nan, 0)] * k
    ranks = [q * (n - 1) for q in QUANTILES]
    below = [int(r) for r in ranks]
    above = [math.ceil(r) for r in ranks]
    wanted = sorted(set(below + above))
    stats = _order_statistics(rows, n, wanted)
    lo = torch.stack([stats[r] for r in below], dim=1)
    hi = torch.stack([stats[r] for r in above], dim=1)
    weights = torch.tensor([r - b for r, b in zip(ranks, below)], dtype=rows.dtype, device=rows.device)
    q = torch.lerp(lo, hi, weights).tolist()
    return [(row[0], row[1], row[2], n) for row in q]


def _order_statistics(rows: torch.Tensor, n: int, wanted: list[int]) -> dict[int, torch.Tensor]:
    """The order statistics of rank ``r`` (0-based) of each row, for each ``r`` in ``wanted``:
    one ``numpy.partition`` of every row around all the ranks on the host (about a tenth of the
    time of the torch calls), else the tail ranks from one ``topk`` and the rest by ``kthvalue``.
    Exact values either way: an order statistic is one of the row's values."""
    if rows.device.type == "cpu":
        try:
            import numpy

            part = numpy.partition(rows.numpy(), wanted, axis=1)
        except (ImportError, RuntimeError, TypeError):  # no numpy, or a tensor numpy cannot view
            pass
        else:
            return {r: torch.from_numpy(part[:, r].copy()) for r in wanted}
    tail = [r for r in wanted if r >= 0.9 * (n - 1)]
    stats = {r: torch.kthvalue(rows, r + 1, dim=1).values for r in wanted if r not in tail}
    if tail:
        top = torch.topk(rows, n - tail[0], dim=1).values  # descending: rank r is top[n - 1 - r]
        stats.update({r: top[:, n - 1 - r] for r in tail})
    return stats


def _finish(
    n: int, mean: float, m2: float, vmax: float, nonfinite: int, confidence: float,
    q: tuple[float, float, float, int] = (math.nan, math.nan, math.nan, 0),
) -> Summary:
    if n > 1:
        std = math.sqrt(m2 / (n - 1))
        stderr = std / math.sqrt(n)
        half = z_value(confidence) * stderr
    else:  # one sample says nothing about the spread: the interval is unbounded, not zero-wide
        std, stderr, half = math.nan, math.inf, math.inf
    return Summary(n, mean, std, stderr, mean - half, mean + half, confidence, vmax, nonfinite, *q)


class BlockStats:
    """Per-block, per-check sufficient statistics for ``n_samples`` samples and ``n_checks`` checks."""

    def __init__(
        self, n_samples: int, n_checks: int, device: torch.device | str = "cpu", *, keep_values: int = QUANTILE_CAP
    ) -> None:
        self.n_samples = n_samples
        self.n_checks = n_checks
        self.device = torch.device(device)
        self.keep_values = keep_values
        n_blocks = max(1, math.ceil(n_samples / BLOCK))
        f64 = dict(dtype=torch.float64, device=device)
        # The five tables are views of one tensor, so a chunk's update writes them in one copy.
        self._packed = torch.zeros(5, n_blocks, n_checks, **f64)
        self.count, self.total, self.m2, self.max, self.nonfinite = self._packed.unbind(0)
        self.max.fill_(-math.inf)
        #: Per-sample values of the first ``keep_values`` indices (NaN: not drawn / not selected).
        self.values = torch.full((min(n_samples, keep_values), n_checks), math.nan, **f64)

    def grown(self, n_samples: int) -> BlockStats:
        """A copy for a larger sample count, holding these blocks (for sequential sampling:
        blocks are keyed by sample index, so later blocks are simply appended)."""
        if n_samples < self.n_samples:
            raise ValueError("cannot shrink")
        new = BlockStats(n_samples, self.n_checks, self.device, keep_values=self.keep_values)
        for a, b in zip(new.tables() + [new.values], self.tables() + [self.values]):
            a[: b.shape[0]] = b
        return new

    def clear_from(self, start: int) -> None:
        """Forget samples from index ``start`` on (a multiple of :data:`BLOCK`)."""
        if start % BLOCK:
            raise ValueError("start must be a multiple of BLOCK")
        b0 = start // BLOCK
        for t in (self.count, self.total, self.m2, self.nonfinite):
            t[b0:] = 0.0
        self.max[b0:] = -math.inf
        self.values[start:] = math.nan

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
        finite = (e - e) == 0  # torch.isfinite in two operators instead of four: inf - inf is NaN
        use = finite if mask is None else mask.reshape(e.shape) & finite
        w = use.to(torch.float64)
        e0 = torch.where(use, e, 0.0)
        count = w.sum(dim=1)
        total = e0.sum(dim=1)
        mean = total / count.clamp(min=1.0)
        m2 = (w * (e0 - mean.unsqueeze(1)) ** 2).sum(dim=1)
        vmax = torch.where(use, e, -math.inf).amax(dim=1)
        # the rows that count but are not finite; the counts are small integers, exact in float64
        bad = (BLOCK if mask is None else mask.reshape(e.shape).to(torch.float64).sum(dim=1)) - count
        b0 = start // BLOCK
        n_rows = min(e.shape[0], self.count.shape[0] - b0)  # padding past the last block is empty
        rows = slice(b0, b0 + n_rows)
        self._packed[:, rows, check] = torch.stack((count, total, m2, vmax, bad))[:, :n_rows]
        stop = min(start + length, self.values.shape[0])
        if stop > start:
            kept = torch.where(use, e, math.nan).reshape(errors.shape)[: stop - start]
            self.values[start:stop, check] = kept

    def summary(self, check: int, confidence: float = 0.95) -> Summary:
        """Combine the blocks of one check (law of total variance, exactly rounded sums)."""
        return self.summaries(confidence)[check]

    def summaries(self, confidence: float = 0.95) -> list[Summary]:
        """Every check's summary, reading the tables from the device once."""
        tables = list(self._packed.cpu().unbind(0))  # one transfer for the five tables
        # the quantiles and the 0/1 test read the first QUANTILE_CAP sample indices, however many
        # values the run keeps (``audit(keep_samples=True)`` keeps them all)
        values = self.values[:QUANTILE_CAP].cpu()
        q = column_quantiles(values)
        out = [self._summary(tables, j, confidence, q[j]) for j in range(self.n_checks)]
        zero_one = _zero_one_columns(values)
        return [dataclasses.replace(s, binary=_all_binary(s, zero_one[j])) for j, s in enumerate(out)]

    def _summary(
        self, tables: list[torch.Tensor], check: int, confidence: float,
        q: tuple[float, float, float, int] = (math.nan, math.nan, math.nan, 0),
    ) -> Summary:
        count, total, m2 = (t[:, check].tolist() for t in tables[:3])
        vmax = float(tables[3][:, check].max())
        nonfinite = int(tables[4][:, check].sum())
        n = int(math.fsum(count))
        if n == 0:
            return Summary.empty(confidence, nonfinite)
        mean = math.fsum(total) / n
        between = math.fsum(c * (t / c - mean) ** 2 for c, t in zip(count, total) if c > 0)
        return _finish(n, mean, math.fsum(m2) + between, vmax, nonfinite, confidence, q)
