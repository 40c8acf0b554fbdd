"""Transforms of images and feature maps: the last two dimensions are (H, W)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from transforms_zoo.base import (
    Param,
    Transform,
    TransformError,
    boolean,
    int_or_range,
    integer,
    number_or_range,
    one_of,
    register,
)
from transforms_zoo.random import SampleRNG


def _need_2d(x: torch.Tensor, name: str) -> None:
    if x.dim() < 3:
        raise TransformError(
            f"'{name}' acts on the last two dimensions (H, W) of each sample, "
            f"but the batch has shape {tuple(x.shape)}"
        )


@register
class Identity(Transform):
    #: Composes as a group action (verified by ``eqaudit transforms --check``).
    group_action = True
    name = "identity"
    summary = "leave the tensor unchanged (the output side of an invariance check)"

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        return x

    def inverse(self) -> Transform:
        return self

    def lie_path(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x


@register
class Rot90(Transform):
    #: Composes as a group action (verified by ``eqaudit transforms --check``).
    group_action = True
    name = "rot90"
    summary = "rotate by k quarter turns counter-clockwise: torch.rot90(x, k, (-2, -1))"
    acts_on = "image (..., H, W)"
    params = (Param("k", integer, 1, "number of quarter turns (negative: clockwise)", "int"),)

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        _need_2d(x, self.name)
        return torch.rot90(x, self.k, (-2, -1))

    def inverse(self) -> Transform:
        return Rot90(k=-self.k)


@register
class HFlip(Transform):
    #: Composes as a group action (verified by ``eqaudit transforms --check``).
    group_action = True
    name = "hflip"
    summary = "mirror left-right (reverse the last dimension, W)"
    acts_on = "image (..., H, W)"

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        _need_2d(x, self.name)
        return torch.flip(x, (-1,))

    def inverse(self) -> Transform:
        return self


@register
class VFlip(Transform):
    #: Composes as a group action (verified by ``eqaudit transforms --check``).
    group_action = True
    name = "vflip"
    summary = "mirror top-bottom (reverse the second-to-last dimension, H)"
    acts_on = "image (..., H, W)"

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        _need_2d(x, self.name)
        return torch.flip(x, (-2,))

    def inverse(self) -> Transform:
        return self


@register
class Transpose(Transform):
    #: Composes as a group action (verified by ``eqaudit transforms --check``).
    group_action = True
    name = "transpose"
    summary = "swap rows and columns (torch.transpose(x, -2, -1)): the D4 reflection about the diagonal"
    acts_on = "image (..., H, W)"

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        _need_2d(x, self.name)
        return torch.transpose(x, -2, -1)

    def inverse(self) -> Transform:
        return self


def _check_rows(x: torch.Tensor, rows: int, name: str) -> None:
    if rows != x.shape[0]:
        raise TransformError(f"'{name}' got parameters for {rows} samples but a batch of shape {list(x.shape)}")


def _per_sample(rng: SampleRNG, tag: str, lo: float, hi: float) -> torch.Tensor:
    """``(n,)`` float64 numbers uniform in ``[lo, hi)`` (the constant ``lo`` when ``lo == hi``)."""
    if lo == hi:
        return torch.full((rng.n,), lo, dtype=torch.float64, device=rng.device)
    return rng.child(tag).uniform(low=lo, high=hi, dtype=torch.float64)


# -- shift --------------------------------------------------------------------------------------
class ShiftParams(NamedTuple):
    """Per-sample integer shifts in pixels, int64 of shape ``(n,)``."""

    dx: torch.Tensor
    dy: torch.Tensor


@register
class Shift(Transform):
    """Translates the image by whole pixels: content moves ``dx`` columns right and ``dy`` rows
    down. ``mode: circular`` wraps around (``torch.roll(x, (dy, dx), (-2, -1))``); ``mode: zeros``
    loses what moves out and fills zeros in. A ``[lo, hi]`` range draws an integer uniformly in
    the inclusive range for each sample."""

    #: Composes as a group action (verified by ``eqaudit transforms --check``).
    group_action = True
    name = "shift"
    summary = "translate by whole pixels (dx: right, dy: down), circular or zero-filled"
    acts_on = "image (..., H, W)"
    params = (
        Param("dx", int_or_range, 0, "columns to move the content right (negative: left)", "int or [lo, hi]"),
        Param("dy", int_or_range, 0, "rows to move the content down (negative: up)", "int or [lo, hi]"),
        Param("mode", one_of("circular", "zeros"), "circular",
              "circular: wrap around; zeros: content moved out is lost, zeros move in", "circular | zeros"),
    )

    def validate(self) -> None:
        self.dx = int_or_range(self.dx)
        self.dy = int_or_range(self.dy)

    @property
    def is_random(self) -> bool:
        return self.dx[0] != self.dx[1] or self.dy[0] != self.dy[1]

    def sample(self, rng: SampleRNG) -> ShiftParams | None:
        if not self.is_random:
            return None

        def draw(tag: str, lo: int, hi: int) -> torch.Tensor:
            if lo == hi:
                return torch.full((rng.n,), lo, dtype=torch.int64, device=rng.device)
            return rng.child(tag).integers(lo, hi + 1)

        return ShiftParams(draw("dx", *self.dx), draw("dy", *self.dy))

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        _need_2d(x, self.name)
        n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
        if params is None:
            self._require_fixed()
            dx, dy = self.dx[0], self.dy[0]
            y = torch.roll(x, (dy, dx), (-2, -1))
            if self.mode == "zeros":
                rows = torch.arange(h, device=x.device) - dy
                cols = torch.arange(w, device=x.device) - dx
                keep = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
                y = torch.where(keep, y, y.new_zeros(()))
            return y
        dx, dy = params.dx.to(x.device), params.dy.to(x.device)
        _check_rows(x, dx.shape[0], self.name)
        if h == 0 or w == 0:
            return x
        # Output pixel (i, j) reads input pixel (i - dy, j - dx): one gather over the flattened H*W.
        rows = torch.arange(h, device=x.device)[None, :] - dy[:, None]  # (n, H)
        cols = torch.arange(w, device=x.device)[None, :] - dx[:, None]  # (n, W)
        idx = (torch.remainder(rows, h)[:, :, None] * w + torch.remainder(cols, w)[:, None, :]).reshape(n, 1, h * w)
        c = math.prod(x.shape[1:-2])
        flat = x.reshape(n, c, h * w)
        y = torch.gather(flat, 2, idx.expand(n, c, h * w))
        if self.mode == "zeros":
            keep = (((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]).reshape(n, 1, h * w)
            y = torch.where(keep, y, y.new_zeros(()))
        return y.reshape(x.shape)

    def inverse(self) -> Transform:
        from transforms_zoo.group import Inverted

        def undo(x: torch.Tensor, params: Any) -> torch.Tensor:
            if params is None:
                self._require_fixed()
                n = x.shape[0]
                params = ShiftParams(torch.full((n,), self.dx[0], dtype=torch.int64, device=x.device),
                                     torch.full((n,), self.dy[0], dtype=torch.int64, device=x.device))
            return self.apply(x, ShiftParams(-params.dx, -params.dy))

        return Inverted(self, undo)

    def lie_path(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Continuous translation by ``t`` pixels (``(n,)``) along the unit direction of (dx, dy)
        ((1, 0) when both are 0 or ranges): band-limited (Fourier) interpolation, circular; equal
        to ``torch.roll`` at integer steps along an axis."""
        _need_2d(x, self.name)
        d = (float(self.dx[0]), float(self.dy[0])) if not self.is_random else (1.0, 0.0)
        norm = math.hypot(*d) or 1.0
        ux, uy = (d[0] / norm, d[1] / norm) if any(d) else (1.0, 0.0)
        return fourier_translate(x, t * ux, t * uy)


def fourier_translate(x: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """Translate each sample of ``x`` (n, ..., H, W) by ``(tx, ty)`` pixels ((n,) each; right and
    down), circularly, by the Fourier shift theorem; differentiable in ``tx`` and ``ty``."""
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    real = torch.float64 if x.dtype == torch.float64 else torch.float32
    fy = torch.fft.fftfreq(h, dtype=real, device=x.device)
    fx = torch.fft.fftfreq(w, dtype=real, device=x.device)
    view = (n,) + (1,) * (x.dim() - 1)
    phase = fy.reshape(-1, 1) * ty.to(real).reshape(view) + fx.reshape(1, -1) * tx.to(real).reshape(view)
    spec = torch.fft.fft2(x.to(real)) * torch.exp(-2j * math.pi * phase)
    return torch.fft.ifft2(spec).real.to(x.dtype)


# -- rotate and scale (bilinear, about the centre) ----------------------------------------------
_PADDING = Param("padding", one_of("zeros", "border", "reflection"), "zeros",
                 "what is read outside the image: zeros, the nearest border pixel, or a mirror image",
                 "zeros | border | reflection")


def _warp(x: torch.Tensor, theta: torch.Tensor, padding: str, name: str) -> torch.Tensor:
    """Resample each sample of ``x`` (n, ..., H, W) at ``theta`` (n, 2, 3) applied to the output
    grid in normalised coordinates (align_corners=False), bilinearly."""
    _need_2d(x, name)
    if not x.is_floating_point():
        raise TransformError(f"'{name}' interpolates, so it needs a floating-point tensor, got {x.dtype}",
                             hint="convert the input to float")
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    _check_rows(x, theta.shape[0], name)
    if x.numel() == 0:
        return x
    c = math.prod(x.shape[1:-2])
    x4 = x.reshape(n, c, h, w)
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
    y = F.grid_sample(x4, grid, mode="bilinear", padding_mode=padding, align_corners=False)
    return y.reshape(x.shape)


def _warp_ad(x: torch.Tensor, theta: torch.Tensor, padding: str, name: str) -> torch.Tensor:
    """The same resampling as :func:`_warp` built from elementary ops, so that forward-mode AD
    (``torch.func.jvp``, for Lie derivatives) goes through it (``grid_sample`` has no forward AD).
    Bilinear, ``align_corners=False``; ``reflection`` padding mirrors the corner pixels' indices."""
    _need_2d(x, name)
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


def _rotation_theta(degrees: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``(n, 2, 3)`` float64 matrices that rotate the content counter-clockwise by ``degrees``.

    In pixel units about the centre, output pixel p reads input pixel R(a) p with
    R = [[cos, -sin], [sin, cos]] in (column, row) coordinates (rows grow downwards), which is what
    ``torch.rot90`` does for a = 90. Normalised coordinates rescale it by the aspect ratio.
    """
    a = torch.deg2rad(degrees.to(torch.float64))
    c, s = torch.cos(a), torch.sin(a)
    z = torch.zeros_like(a)
    row0 = torch.stack([c, -s * (h / w), z], dim=-1)
    row1 = torch.stack([s * (w / h), c, z], dim=-1)
    return torch.stack([row0, row1], dim=-2)


@register
class Rotate(Transform):
    """Rotates the image about its centre by ``degrees`` (counter-clockwise for positive angles, as
    ``rot90``: ``degrees: 90`` matches ``rot90`` on a square image), with bilinear interpolation
    (``affine_grid`` + ``grid_sample``, ``align_corners=False``). A ``[lo, hi]`` range draws the
    angle uniformly for each sample. Corners read from outside the image get ``padding``."""

    #: Composes as a group action (verified by ``eqaudit transforms --check``).
    group_action = True
    #: Interpolates: the action is exact only up to resampling error.
    approximate = True
    name = "rotate"
    summary = "rotate about the centre by an angle in degrees (counter-clockwise), bilinear"
    acts_on = "image (..., H, W)"
    params = (
        Param("degrees", number_or_range, doc="angle, counter-clockwise; [lo, hi]: uniform per sample",
              type_doc="number or [lo, hi]"),
        _PADDING,
    )

    @property
    def is_random(self) -> bool:
        return self.degrees[0] != self.degrees[1]

    def sample(self, rng: SampleRNG) -> torch.Tensor | None:
        """The angles in degrees, float64 of shape ``(n,)``."""
        if not self.is_random:
            return None
        return _per_sample(rng, "degrees", *self.degrees)

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        _need_2d(x, self.name)
        if params is None:
            self._require_fixed()
            return self._by(x, self.degrees[0])
        h, w = x.shape[-2], x.shape[-1]
        return _warp(x, _rotation_theta(params.to(x.device), h, w), self.padding, self.name)

    def _by(self, x: torch.Tensor, degrees: float) -> torch.Tensor:
        """Rotation by one fixed angle. Multiples of 90 degrees that keep the frame (any on a
        square, 180 on any image) move whole pixels: done exactly, as ``rot90`` (bilinear
        sampling gives the same in exact arithmetic, but float32 grid coordinates are off by up
        to ~1e-4 of a pixel on large images)."""
        turns, rest = divmod(degrees, 90.0)
        if rest == 0 and (turns % 2 == 0 or x.shape[-2] == x.shape[-1]):
            return torch.rot90(x, int(turns) % 4, (-2, -1))
        angles = torch.full((x.shape[0],), degrees, dtype=torch.float64, device=x.device)
        return _warp(x, _rotation_theta(angles, x.shape[-2], x.shape[-1]), self.padding, self.name)

    def inverse(self) -> Transform:
        from transforms_zoo.group import Inverted

        def undo(x: torch.Tensor, params: Any) -> torch.Tensor:
            if params is None:
                self._require_fixed()
                _need_2d(x, self.name)
                return self._by(x, -self.degrees[0])
            return self.apply(x, -params)

        return Inverted(self, undo)

    def lie_path(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Rotation by ``t`` radians (``(n,)``) counter-clockwise, bilinear (``degrees`` is not used)."""
        h, w = x.shape[-2], x.shape[-1]
        c, s = torch.cos(t), torch.sin(t)
        z = torch.zeros_like(t)
        theta = torch.stack([torch.stack([c, -s * (h / w), z], -1), torch.stack([s * (w / h), c, z], -1)], -2)
        return _warp_ad(x, theta, self.padding, self.name)


def _positive_or_range(v: Any) -> tuple[float, float]:
    """A number > 0 or a [lo, hi] range of numbers > 0."""
    lo, hi = number_or_range(v)
    if lo <= 0:
        raise ValueError(f"expected a number > 0 or a [lo, hi] range of numbers > 0, got {v!r}")
    return lo, hi


@register
class Scale(Transform):
    """Zooms about the image centre: ``factor > 1`` zooms in (content grows, the border is cropped
    away), ``factor < 1`` zooms out (the freed border gets ``padding``). Bilinear, like
    ``rotate``. A ``[lo, hi]`` range draws the factor per sample, uniformly or, with
    ``log_uniform: true``, uniformly in log(factor) (so 0.5 and 2 are equally likely)."""

    #: Composes as a group action (verified by ``eqaudit transforms --check``).
    group_action = True
    #: Interpolates: the action is exact only up to resampling error.
    approximate = True
    name = "scale"
    summary = "zoom about the centre by a factor (> 1 zooms in), bilinear"
    acts_on = "image (..., H, W)"
    params = (
        Param("factor", _positive_or_range, doc="zoom factor > 0 (> 1 zooms in); [lo, hi]: random per sample",
              type_doc="number or [lo, hi]"),
        _PADDING,
        Param("log_uniform", boolean, False, "draw a range's factor uniformly in log(factor)", "bool"),
    )

    @property
    def is_random(self) -> bool:
        return self.factor[0] != self.factor[1]

    def sample(self, rng: SampleRNG) -> torch.Tensor | None:
        """The factors, float64 of shape ``(n,)``."""
        if not self.is_random:
            return None
        lo, hi = self.factor
        if self.log_uniform:
            return torch.exp(_per_sample(rng, "factor", math.log(lo), math.log(hi)))
        return _per_sample(rng, "factor", lo, hi)

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        _need_2d(x, self.name)
        n = x.shape[0]
        if params is None:
            self._require_fixed()
            if self.factor[0] == 1.0:  # exactly the identity (float32 grid coordinates are not)
                return x.clone()
        f = (torch.full((n,), self.factor[0], dtype=torch.float64, device=x.device) if params is None
             else params.to(device=x.device, dtype=torch.float64))
        inv = 1.0 / f
        z = torch.zeros_like(inv)
        theta = torch.stack([torch.stack([inv, z, z], -1), torch.stack([z, inv, z], -1)], -2)
        return _warp(x, theta, self.padding, self.name)

    def inverse(self) -> Transform:
        from transforms_zoo.group import Inverted

        def undo(x: torch.Tensor, params: Any) -> torch.Tensor:
            if params is None:
                self._require_fixed()
                params = torch.full((x.shape[0],), self.factor[0], dtype=torch.float64, device=x.device)
            return self.apply(x, 1.0 / params)

        return Inverted(self, undo)

    def lie_path(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Zoom by the factor ``exp(t)`` (``(n,)``), bilinear (``factor`` is not used)."""
        inv = torch.exp(-t)
        z = torch.zeros_like(inv)
        theta = torch.stack([torch.stack([inv, z, z], -1), torch.stack([z, inv, z], -1)], -2)
        return _warp_ad(x, theta, self.padding, self.name)
