"""The per-sample errors an audit keeps when asked (``audit(..., keep_samples=True)``): every
check's errors in sample order, the very values folded into its estimates (no second pass over
the model), with a digest of the drawn points that tells whether two runs evaluated the same
points (paired comparisons, ``eqaudit measure --save-samples``).

Keeping them only widens the statistics' value buffer (:class:`BlockStats` ``keep_values``) from
the first :data:`QUANTILE_CAP` sample indices to all of them; the report is summarised from the
same first :data:`QUANTILE_CAP` values either way (:meth:`BlockStats.summaries`), so it does not
change.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

import torch

from transforms_zoo import SampleRNG

from ..report.compare import SampleErrors
from ..spec import Spec
from .estimator import BLOCK, QUANTILE_CAP, BlockStats
from .sampling import PointSampler

__all__ = ["keep_count", "points_digest", "sample_errors"]


def keep_count(keep_samples: bool, most_samples: int) -> int:
    """The ``keep_values`` of the run's statistics: every sample up to the most the run may reach
    (so that sequential sampling's :meth:`BlockStats.grown` keeps them too), or the quantiles'
    default."""
    return max(most_samples, QUANTILE_CAP) if keep_samples else QUANTILE_CAP


def points_digest(sampler: PointSampler, seed: int, dev: torch.device) -> str:
    """A digest of the first block of drawn points: two runs pair only when it agrees."""
    x = sampler.draw(SampleRNG.for_range(seed, 0, BLOCK, dev))
    return hashlib.sha256(x.detach().to("cpu", torch.float64).contiguous().numpy().tobytes()).hexdigest()[:16]


def sample_errors(stats: BlockStats, spec: Spec, failed: Mapping[int, Any], sampler: PointSampler,
                  dev: torch.device) -> SampleErrors:
    """Every check's per-sample errors from statistics that kept all ``spec.samples`` values
    (float64, sample order; NaN: non-finite or not drawn); a check in ``failed`` gets NaN only."""
    n = spec.samples
    if stats.values.shape[0] < n:
        raise ValueError(f"the statistics kept {stats.values.shape[0]} of {n} per-sample values")
    values = stats.values[:n].cpu()
    checks = {c.name: ([math.nan] * n if j in failed else values[:, j].tolist()) for j, c in enumerate(spec.checks)}
    return SampleErrors(spec.seed, n, points_digest(sampler, spec.seed, dev), checks)
