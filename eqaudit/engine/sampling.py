"""Where the audit measures: the model inputs of a range of sample indices (a uniform box,
scrambled Sobol points, or rows of a data tensor), and which checks each sample runs under
``num_funcs``. Sample ``i``'s point depends only on ``(seed, i)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from transforms_zoo import SampleRNG

from ..errors import did_you_mean
from ..spec import InputSpec, Spec


class PointSampler:
    """Draws model inputs for a range of sample indices: a uniform box or rows of a data tensor."""

    def __init__(self, spec: Spec, device: torch.device, dtype: torch.dtype) -> None:
        inp: InputSpec = spec.input
        self.dtype = getattr(torch, inp.dtype) if inp.dtype else dtype
        self.data: torch.Tensor | None = None
        self.sequential = inp.sampling == "sequential"
        if inp.data is not None:
            self.data = _load_data(spec).to(device=device, dtype=self.dtype)
            self.shape = tuple(self.data.shape[1:])
            if inp.shape and tuple(inp.shape) != self.shape:
                raise spec.error(
                    "input.shape",
                    f"data '{inp.data.key}' holds samples of shape {list(self.shape)}, the spec says {list(inp.shape)}",
                    "fix input.shape or drop it to use the data's shape",
                )
        else:
            self.shape = tuple(inp.shape)
            b = torch.tensor(inp.bounds, dtype=torch.float64)
            try:
                b = torch.broadcast_to(b, self.shape + (2,))
            except RuntimeError:
                raise spec.error(
                    "input.bounds",
                    f"bounds of shape {list(b.shape[:-1])} + [lo, hi] do not broadcast to input.shape "
                    f"{list(self.shape)}",
                ) from None
            self.lo = b[..., 0].to(device=device, dtype=self.dtype)
            self.span = (b[..., 1] - b[..., 0]).to(device=device, dtype=self.dtype)
        self.sobol = inp.sampling == "sobol"
        self.seed = spec.seed
        self._engine: Any = None
        self._next = -1  # the Sobol index the cached engine draws next

    def _sobol(self, rng: SampleRNG) -> torch.Tensor:
        """Points ``start .. start + n - 1`` of the scrambled Sobol sequence of ``seed``: point i is
        the i-th Sobol point, whatever the chunking (``fast_forward`` to each chunk's start)."""
        start, n = int(rng.index[0]) if rng.n else 0, rng.n
        if rng.n and int(rng.index[-1]) != start + n - 1:
            raise ValueError("Sobol points are drawn for contiguous index ranges")
        dim = max(1, math.prod(self.shape))
        if self._engine is None or self._next != start:
            self._engine = torch.quasirandom.SobolEngine(dim, scramble=True, seed=self.seed)
            if start:
                self._engine.fast_forward(start)
        u = self._engine.draw(n, dtype=torch.float64)
        self._next = start + n
        u = u.reshape(n, *self.shape).to(device=rng.device, dtype=self.dtype)
        return self.lo + self.span * u

    def draw(self, rng: SampleRNG) -> torch.Tensor:
        """The points of the samples of ``rng`` (shape ``(rng.n, *self.shape)``)."""
        if self.sobol:
            return self._sobol(rng)
        stream = rng.child("points")
        if self.data is not None:
            n_rows = self.data.shape[0]
            if self.sequential:
                idx = rng.index % n_rows
            else:
                idx = stream.integers(0, n_rows)
            return self.data[idx]
        u = stream.uniform(*self.shape, dtype=self.dtype)
        return u.mul_(self.span).add_(self.lo)  # lo + span * u, in place


def _load_data(spec: Spec) -> torch.Tensor:
    ref = spec.input.data
    assert ref is not None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(ref.path), framework="pt") as fh:
            keys = list(fh.keys())
            if ref.key not in keys:
                raise spec.error(
                    "input.data",
                    f"no tensor '{ref.key}' in {ref.path.name}",
                    did_you_mean(ref.key, keys) or ("keys: " + ", ".join(keys[:10])),
                )
            data = fh.get_tensor(ref.key)
    except (SafetensorError, OSError) as exc:
        raise spec.error("input.data", f"cannot read '{ref.path}' as safetensors: {exc}") from None
    if data.dim() < 1 or data.shape[0] == 0:
        raise spec.error("input.data", f"tensor '{ref.key}' has no rows (shape {list(data.shape)})")
    if not data.is_floating_point():
        data = data.to(torch.float32)
    return data


def rows_by_check(picks: torch.Tensor, k: int) -> list[torch.Tensor]:
    """Each of ``k`` checks' rows, ascending, given the checks each row picked (``(n, m)``, distinct
    per row). One read back to the host per chunk (the counts), not one per check."""
    flat = picks.reshape(-1)
    order = torch.sort(flat, stable=True).indices  # grouped by check; row-major, so rows ascend within
    # scatter_add, not bincount: bincount sizes its output from the data (two more syncs on CUDA)
    counts = torch.zeros(k, dtype=torch.int64, device=flat.device).scatter_add_(0, flat, torch.ones_like(flat)).tolist()
    return list(torch.split(order // picks.shape[1], counts))
