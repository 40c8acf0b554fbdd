"""Training-dynamics figures of a loss landscape at a point ``w``: sharpness and top Hessian eigenvalue.

Pure functions of a ``loss_fn`` (no arguments, returns a scalar tensor that depends on ``params``)
and the parameter tensors. Parameters are perturbed in place and restored bit for bit afterwards.

* :func:`sharpness` -- ``phi = mean over unit directions d and displacements t of |L(w + t d) - L(w)|``,
  where ``d`` is a unit vector in the space of *all* parameters together (Euclidean norm 1 over the
  concatenation of every parameter tensor) and ``t`` runs over the given displacements.
* :func:`top_hessian_eigenvalue` -- the dominant eigenvalue of the Hessian of ``L`` at ``w`` by
  power iteration on Hessian-vector products (double backward through ``torch.autograd.grad``);
  the Hessian is never formed.

For a quadratic ``L(w) = 0.5 w^T A w + b^T w`` both are known exactly: the top eigenvalue is the
largest-magnitude eigenvalue of ``A``, and ``L(w + t d) - L(w) = t d^T (A w + b) + 0.5 t^2 d^T A d``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

LossFn = Callable[[], torch.Tensor]
Direction = Sequence[torch.Tensor]

DEFAULT_DISPLACEMENTS = (0.05, 0.1)
DEFAULT_DIRECTIONS = 10
DEFAULT_ITERATIONS = 50


def _params(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    out = [p for p in params if p.requires_grad]
    if not out:
        raise ValueError("no trainable parameters (requires_grad=True)")
    return out


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float64, device=a[0].device)
    for x, y in zip(a, b):
        total = total + (x.to(torch.float64) * y.to(torch.float64)).sum()
    return total


def _norm(v: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(_dot(v, v))


def random_directions(
    params: Iterable[torch.Tensor], count: int, *, seed: int = 0
) -> list[list[torch.Tensor]]:
    """``count`` random unit directions in the joint parameter space (Gaussian, then normalised).

    Drawn in float64 on the CPU from a generator seeded with ``seed`` (so the same on every
    device), then cast to each parameter's dtype and device.
    """
    ps = _params(params)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    dirs = []
    for _ in range(int(count)):
        raw = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in ps]
        n = _norm(raw)
        dirs.append([(r / n).to(dtype=p.dtype, device=p.device) for r, p in zip(raw, ps)])
    return dirs


@torch.no_grad()
def sharpness(
    loss_fn: LossFn,
    params: Iterable[torch.Tensor],
    *,
    displacements: Sequence[float] = DEFAULT_DISPLACEMENTS,
    directions: int | Sequence[Direction] = DEFAULT_DIRECTIONS,
    seed: int = 0,
) -> dict[str, Any]:
    """``phi = mean_{d, t} |L(w + t d) - L(w)|`` over unit directions ``d`` and displacements ``t``.

    ``directions`` is a count (random unit directions from :func:`random_directions` with
    ``seed``) or explicit directions (each a list of tensors shaped like ``params``; used as
    given, so pass unit vectors). Returns ``phi``, ``loss`` (``L(w)``), the displacements, the
    number of directions and ``per_displacement`` (the mean for each ``t``).
    """
    ps = _params(params)
    ts = [float(t) for t in displacements]
    if not ts:
        raise ValueError("displacements must not be empty")
    if isinstance(directions, int):
        dirs = random_directions(ps, directions, seed=seed)
    else:
        dirs = [list(d) for d in directions]
    if not dirs:
        raise ValueError("need at least one direction")
    saved = [p.detach().clone() for p in ps]
    base = float(loss_fn())
    diffs = torch.zeros(len(dirs), len(ts), dtype=torch.float64)
    try:
        for i, d in enumerate(dirs):
            if len(d) != len(ps):
                raise ValueError(f"direction {i} has {len(d)} tensors, expected {len(ps)}")
            for j, t in enumerate(ts):
                for p, w, dp in zip(ps, saved, d):
                    p.copy_(w + t * dp.to(dtype=p.dtype, device=p.device))
                diffs[i, j] = abs(float(loss_fn()) - base)
    finally:
        for p, w in zip(ps, saved):
            p.copy_(w)
    return {
        "phi": float(diffs.mean()),
        "loss": base,
        "displacements": ts,
        "directions": len(dirs),
        "per_displacement": [float(x) for x in diffs.mean(dim=0)],
        "seed": int(seed),
    }


def hessian_vector_product(
    loss_fn: LossFn, params: Iterable[torch.Tensor], v: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """``H v`` at the current parameters (one forward, one backward, one double backward)."""
    ps = _params(params)
    with torch.enable_grad():
        grads = torch.autograd.grad(loss_fn(), ps, create_graph=True)
        dot = sum((g * x).sum() for g, x in zip(grads, v))
        hv = torch.autograd.grad(dot, ps, allow_unused=True)
    return [torch.zeros_like(p) if h is None else h.detach() for h, p in zip(hv, ps)]


def top_hessian_eigenvalue(
    loss_fn: LossFn,
    params: Iterable[torch.Tensor],
    *,
    iterations: int = DEFAULT_ITERATIONS,
    tol: float = 1e-5,
    seed: int = 0,
) -> dict[str, Any]:
    """The dominant (largest-magnitude, signed) eigenvalue of the Hessian of ``loss_fn``.

    Power iteration ``v <- H v / |H v|`` from a random unit start (seeded), with the Rayleigh
    quotient ``v^T H v`` as the estimate; stops when it changes by less than ``tol`` (relative)
    or after ``iterations`` Hessian-vector products. The gradient graph is built once and reused.
    Returns ``eigenvalue``, ``iterations`` (HVPs used) and ``converged``.
    """
    ps = _params(params)
    v = random_directions(ps, 1, seed=seed)[0]
    with torch.enable_grad():
        grads = torch.autograd.grad(loss_fn(), ps, create_graph=True)
        eig = math.nan
        converged = False
        k = 0
        for k in range(1, int(iterations) + 1):
            dot = sum((g * x).sum() for g, x in zip(grads, v))
            hv = torch.autograd.grad(dot, ps, retain_graph=True, allow_unused=True)
            hv = [torch.zeros_like(p) if h is None else h.detach() for h, p in zip(hv, ps)]
            new, n = torch.stack([_dot(v, hv), _norm(hv)]).tolist()  # one read back per iteration
            if n == 0.0 or not math.isfinite(n):
                eig = 0.0 if n == 0.0 else math.nan
                converged = n == 0.0
                break
            v = [h / n for h in hv]
            if math.isfinite(eig) and abs(new - eig) <= tol * max(abs(new), 1e-12):
                eig = new
                converged = True
                break
            eig = new
    return {"eigenvalue": eig, "iterations": k, "converged": converged, "tol": tol, "seed": int(seed)}
