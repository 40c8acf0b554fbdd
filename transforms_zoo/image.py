"""Whole-pixel moves of images and feature maps (the last two dimensions are (H, W)): identity,
quarter turns, flips, transpose and integer shifts (with a Fourier path for Lie derivatives)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from transforms_zoo.errors import TransformError, check_rows
from transforms_zoo.image_ops import fourier_translate, need_2d
from transforms_zoo.params import Param, int_or_range, integer, one_of
from transforms_zoo.protocol import Inverted, Transform
from transforms_zoo.random import SampleRNG
from transforms_zoo.registry import register


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
        """The path that stands still (the output side of an invariance check)."""
        return x

    def lie_generator_error(self) -> TransformError:
        return TransformError("'identity' does not move, so the derivative along it is zero",
                              hint="differentiate along shift, rotate, scale or rotate3d with an axis")


@register
class Rot90(Transform):
    #: Composes as a group action (verified by ``eqaudit transforms --check``).
    group_action = True
    name = "rot90"
    summary = "rotate by k quarter turns counter-clockwise: torch.rot90(x, k, (-2, -1))"
    acts_on = "image (..., H, W)"
    params = (Param("k", integer, 1, "number of quarter turns (negative: clockwise)", "int"),)

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        need_2d(x, self.name)
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
        need_2d(x, self.name)
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
        need_2d(x, self.name)
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
        need_2d(x, self.name)
        return torch.transpose(x, -2, -1)

    def inverse(self) -> Transform:
        return self


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
        need_2d(x, self.name)
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
        check_rows(x, dx.shape[0], self.name)
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
        def undo(x: torch.Tensor, params: Any) -> torch.Tensor:
            if params is None:
                self._require_fixed()
                n = x.shape[0]
                params = ShiftParams(torch.full((n,), self.dx[0], dtype=torch.int64, device=x.device),
                                     torch.full((n,), self.dy[0], dtype=torch.int64, device=x.device))
            return self.apply(x, ShiftParams(-params.dx, -params.dy))

        return Inverted(self, undo)

    def _lie_direction(self) -> tuple[float, float] | None:
        """The direction of the Lie path: that of a fixed (dx, dy), or the axis of the one range
        when the other axis stays at 0; None for (0, 0) or for several directions."""
        if not self.is_random:
            d = (float(self.dx[0]), float(self.dy[0]))
        else:
            moves = (self.dx != (0, 0), self.dy != (0, 0))
            if all(moves):
                return None
            d = (1.0, 0.0) if moves[0] else (0.0, 1.0)
        return d if any(d) else None

    def lie_generator_error(self) -> TransformError | None:
        if self._lie_direction() is not None:
            return None
        if self.is_random:
            return TransformError("a shift with ranges moving along both dx and dy has no single direction for "
                                  "a Lie derivative", hint="give one direction, e.g. dx: 1 (or dx: 1, dy: 1)")
        return TransformError("a shift by (0, 0) has no direction, so its Lie derivative would be taken "
                              "along a made-up one", hint="give the direction, e.g. dx: 1; its length does not matter")

    def lie_path(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Continuous translation by ``t`` pixels (``(n,)``) along the unit direction of (dx, dy) (of
        the ranged axis for a range; (0, 0) and ranges along both axes are refused): band-limited
        (Fourier) interpolation, circular; equal to ``torch.roll`` at integer steps along an axis."""
        need_2d(x, self.name)
        self._require_lie_generator()
        d = self._lie_direction()
        assert d is not None
        norm = math.hypot(*d)
        return fourier_translate(x, t * (d[0] / norm), t * (d[1] / norm))

