"""The tensor kernels behind the image transforms: shape guards, per-sample draws, Fourier
translation and bilinear resampling (plus a variant built from elementary ops for forward-mode AD).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from transforms_zoo.errors import TransformError, check_rows
from transforms_zoo.random import SampleRNG


def need_2d(x: torch.Tensor, name: str) -> None:
    if x.dim() < 3:
        raise TransformError(
            f"'{name}' acts on the last two dimensions (H, W) of each sample, "
            f"but one sample has shape {list(x.shape[1:])}"
        )


def per_sample(rng: SampleRNG, tag: str, lo: float, hi: float) -> torch.Tensor:
    """``(n,)`` float64 numbers uniform in ``[lo, hi)`` (the constant ``lo`` when ``lo == hi``)."""
    if lo == hi:
        return torch.full((rng.n,), lo, dtype=torch.float64, device=rng.device)
    return rng.child(tag).uniform(low=lo, high=hi, dtype=torch.float64)


def fourier_translate(x: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """Translate each sample of ``x`` (n, ..., H, W) by ``(tx, ty)`` pixels ((n,) each; right and
    down), circularly, by the Fourier shift theorem; differentiable in ``tx`` and ``ty``."""
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    if h == 0 or w == 0:  # no pixels to move
        return x
    real = torch.float64 if x.dtype == torch.float64 else torch.float32
    fy = torch.fft.fftfreq(h, dtype=real, device=x.device)
    fx = torch.fft.fftfreq(w, dtype=real, device=x.device)
    view = (n,) + (1,) * (x.dim() - 1)
    phase = fy.reshape(-1, 1) * ty.to(real).reshape(view) + fx.reshape(1, -1) * tx.to(real).reshape(view)
    spec = torch.fft.fft2(x.to(real)) * torch.exp(-2j * math.pi * phase)
    return torch.fft.ifft2(spec).real.to(x.dtype)


def warp(x: torch.Tensor, theta: torch.Tensor, padding: str, name: str) -> torch.Tensor:
    """Resample each sample of ``x`` (n, ..., H, W) at ``theta`` (n, 2, 3) applied to the output
    grid in normalised coordinates (align_corners=False), bilinearly."""
    need_2d(x, name)
    if not x.is_floating_point():
        raise TransformError(f"'{name}' interpolates, so it needs a floating-point tensor, got {x.dtype}",
                             hint="convert the input to float")
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    check_rows(x, theta.shape[0], name)
    if x.numel() == 0:
        return x
    c = math.prod(x.shape[1:-2])
    x4 = x.reshape(n, c, h, w)
    # CPUs have no half-precision affine_grid for a side of one pixel: the grid is made in float32
    half_on_cpu = x.device.type == "cpu" and x.dtype in (torch.float16, torch.bfloat16)
    theta = theta.to(device=x.device, dtype=torch.float32 if half_on_cpu else x.dtype)
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False).to(x.dtype)
    y = F.grid_sample(x4, grid, mode="bilinear", padding_mode=padding, align_corners=False)
    return y.reshape(x.shape)


def warp_ad(x: torch.Tensor, theta: torch.Tensor, padding: str, name: str) -> torch.Tensor:
    """The same resampling as :func:`warp` built from elementary ops, so that forward-mode AD
    (``torch.func.jvp``, for Lie derivatives) goes through it (``grid_sample`` has no forward AD).
    Bilinear, ``align_corners=False``; ``reflection`` padding mirrors the corner pixels' indices."""
    need_2d(x, name)
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    c = math.prod(x.shape[1:-2])
    x3 = x.reshape(n, c, h * w)
    theta = theta.to(dtype=x.dtype, device=x.device)
    bx = (2 * torch.arange(w, dtype=x.dtype, device=x.device) + 1) / w - 1
    by = (2 * torch.arange(h, dtype=x.dtype, device=x.device) + 1) / h - 1
    gy, gx = torch.meshgrid(by, bx, indexing="ij")
    base = torch.stack([gx, gy, torch.ones_like(gx)], -1).reshape(1, h * w, 3)
    grid = base @ theta.transpose(-1, -2)  # (n, H*W, 2): normalised (x, y) read for each output pixel
    ix = ((grid[..., 0] + 1) * w - 1) / 2
    iy = ((grid[..., 1] + 1) * h - 1) / 2
    # At t = 0 the sampling points sit exactly on pixel centres, where bilinear interpolation has
    # only one-sided derivatives: average the interpolants of the cells on either side (equal
    # values, the mean of both slopes: the central derivative, as a finite difference sees it).
    out = 0.5 * (_bilinear_cells(x3, ix, iy, -1e-6, h, w, padding)
                 + _bilinear_cells(x3, ix, iy, 1e-6, h, w, padding))
    return out.reshape(x.shape)


def _bilinear_cells(x3: torch.Tensor, ix: torch.Tensor, iy: torch.Tensor, nudge: float, h: int, w: int,
                    padding: str) -> torch.Tensor:
    """Bilinear samples of ``x3`` (n, C, H*W) at pixel coordinates ``(ix, iy)`` (n, H*W), using the
    cells of ``floor(coordinate + nudge)`` (the choice matters only on cell edges)."""
    n, c = x3.shape[0], x3.shape[1]
    x0, y0 = torch.floor(ix.detach() + nudge), torch.floor(iy.detach() + nudge)
    fx, fy = ix - x0, iy - y0
    out = None
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            cx, cy = (x0 + dx).long(), (y0 + dy).long()
            inside = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
            if padding == "reflection":
                cx, cy = _mirror(cx, w), _mirror(cy, h)
            else:
                cx, cy = cx.clamp(0, w - 1), cy.clamp(0, h - 1)
            weight = wx * wy
            if padding == "zeros":
                weight = weight * inside.to(x3.dtype)
            vals = torch.gather(x3, 2, (cy * w + cx)[:, None, :].expand(n, c, h * w))
            term = vals * weight[:, None, :]
            out = term if out is None else out + term
    return out


def _mirror(i: torch.Tensor, size: int) -> torch.Tensor:
    """Indices mirrored into [0, size) with the edge pixel repeated (-1 -> 0, size -> size - 1)."""
    period = 2 * size
    i = torch.remainder(i, period)
    return torch.where(i >= size, period - 1 - i, i)


def rotation_theta(degrees: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``(n, 2, 3)`` float64 matrices that rotate the content counter-clockwise by ``degrees``.

    In pixel units about the centre, output pixel p reads input pixel R(a) p with
    R = [[cos, -sin], [sin, cos]] in (column, row) coordinates (rows grow downwards), which is what
    ``torch.rot90`` does for a = 90. Normalised coordinates rescale it by the aspect ratio.
    """
    return rotation_theta_radians(torch.deg2rad(degrees.to(torch.float64)), h, w)


def rotation_theta_radians(a: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """:func:`rotation_theta` of angles ``a`` in radians, differentiable in ``a`` (Lie paths). An
    empty image (``h`` or ``w`` 0) has no aspect ratio: any is right, 1 is taken."""
    c, s = torch.cos(a), torch.sin(a)
    z = torch.zeros_like(a)
    wide, tall = (h / w, w / h) if h and w else (1.0, 1.0)
    row0 = torch.stack([c, -s * wide, z], dim=-1)
    row1 = torch.stack([s * tall, c, z], dim=-1)
    return torch.stack([row0, row1], dim=-2)


def zoom_theta(inv: torch.Tensor) -> torch.Tensor:
    """``(n, 2, 3)`` matrices that zoom the content about the centre by ``1 / inv`` (``(n,)``):
    output pixel p reads input pixel ``inv * p``; differentiable in ``inv`` (Lie paths)."""
    z = torch.zeros_like(inv)
    return torch.stack([torch.stack([inv, z, z], -1), torch.stack([z, inv, z], -1)], -2)
