"""Where the audit measures: the model inputs of a range of sample indices (a uniform box,
scrambled Sobol points, or rows of the data: ``input.data`` or ``input.dataset``, read by
:mod:`eqaudit.io.datasets`), and which checks each sample runs under
``num_funcs``. Sample ``i``'s point depends only on ``(seed, i)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from transforms_zoo import SampleRNG

from ..errors import EqauditError
from ..spec import InputSpec, Spec


class PointSampler:
    """Draws model inputs for a range of sample indices: a uniform box or rows of a data tensor."""

    def __init__(self, spec: Spec, device: torch.device, dtype: torch.dtype) -> None:
        inp: InputSpec = spec.input
        self.dtype = getattr(torch, inp.dtype) if inp.dtype else dtype
        self.data: torch.Tensor | None = None
        self.sequential = inp.sampling == "sequential"
        if inp.from_data:
            self.data = load_input_data(spec).to(device=device, dtype=self.dtype)
            self.shape = tuple(self.data.shape[1:])
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


def load_input_data(spec: Spec) -> torch.Tensor:
    """The samples of ``input.data`` or ``input.dataset`` as one tensor (dimension 0: the samples),
    read the same way for ``measure`` and ``validate``; the sample shape must match ``input.shape``
    when given. Errors are located at the key that names the data."""
    from ..io.datasets import call_reference, dataset_inputs, read_data

    inp = spec.input
    key = "input.data" if inp.data is not None else "input.dataset"
    try:
        if inp.data is not None:
            data = read_data(inp.data.path, inp.data.key, tuple(inp.shape), resize=inp.resize)
        elif inp.dataset is not None:
            data = dataset_inputs(call_reference(inp.dataset, spec.base_dir), inp.dataset)
        else:
            raise ValueError("the spec draws from a box, not data")
    except EqauditError as exc:
        raise spec.error(key, exc.message, exc.hint) from None
    if inp.shape and tuple(inp.shape) != tuple(data.shape[1:]):
        what = f"data '{inp.data.key or inp.data.path.name}'" if inp.data is not None else f"dataset {inp.dataset}"
        raise spec.error("input.shape", f"{what} holds samples of shape {list(data.shape[1:])}, "
                         f"the spec says {list(inp.shape)}", "fix input.shape or drop it to use the data's shape")
    return data


def rows_by_check(picks: torch.Tensor, k: int) -> list[torch.Tensor]:
    """Each of ``k`` checks' rows, ascending, given the checks each row picked (``(n, m)``, distinct
    per row). One read back to the host per chunk (the counts), not one per check."""
    flat = picks.reshape(-1)
    order = torch.sort(flat, stable=True).indices  # grouped by check; row-major, so rows ascend within
    # scatter_add, not bincount: bincount sizes its output from the data (two more syncs on CUDA)
    counts = torch.zeros(k, dtype=torch.int64, device=flat.device).scatter_add_(0, flat, torch.ones_like(flat)).tolist()
    return list(torch.split(order // picks.shape[1], counts))
