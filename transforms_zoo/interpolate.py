"""Interpolating image transforms: rotation and zoom about the centre, bilinear."""

from __future__ import annotations

import math
from typing import Any

import torch

from transforms_zoo.errors import TransformError
from transforms_zoo.image_ops import (need_2d, per_sample, rotation_theta, rotation_theta_radians, warp, warp_ad,
                                      zoom_theta)
from transforms_zoo.params import Param, boolean, number_or_range, one_of
from transforms_zoo.protocol import Inverted, Transform
from transforms_zoo.random import SampleRNG
from transforms_zoo.registry import register


_PADDING = Param("padding", one_of("zeros", "border", "reflection"), "zeros",
                 "what is read outside the image: zeros, the nearest border pixel, or a mirror image",
                 "zeros | border | reflection")


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
        return per_sample(rng, "degrees", *self.degrees)

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        need_2d(x, self.name)
        if params is None:
            self._require_fixed()
            return self._by(x, self.degrees[0])
        h, w = x.shape[-2], x.shape[-1]
        return warp(x, rotation_theta(params.to(x.device), h, w), self.padding, self.name)

    def _by(self, x: torch.Tensor, degrees: float) -> torch.Tensor:
        """Rotation by one fixed angle. Multiples of 90 degrees that keep the frame (any on a
        square, 180 on any image) move whole pixels: done exactly, as ``rot90`` (bilinear
        sampling gives the same in exact arithmetic, but float32 grid coordinates are off by up
        to ~1e-4 of a pixel on large images)."""
        turns, rest = divmod(degrees, 90.0)
        if rest == 0 and (turns % 2 == 0 or x.shape[-2] == x.shape[-1]):
            return torch.rot90(x, int(turns) % 4, (-2, -1))
        angles = torch.full((x.shape[0],), degrees, dtype=torch.float64, device=x.device)
        return warp(x, rotation_theta(angles, x.shape[-2], x.shape[-1]), self.padding, self.name)

    def inverse(self) -> Transform:
        def undo(x: torch.Tensor, params: Any) -> torch.Tensor:
            if params is None:
                self._require_fixed()
                need_2d(x, self.name)
                return self._by(x, -self.degrees[0])
            return self.apply(x, -params)

        return Inverted(self, undo)

    def lie_generator_error(self) -> TransformError | None:
        if self.degrees != (0.0, 0.0):
            return None
        return TransformError("a rotation by 0 degrees does not move, so its Lie derivative would be taken "
                              "along a made-up direction", hint="give any nonzero angle, e.g. degrees: 1; its size "
                              "does not matter")

    def lie_path(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Rotation by ``t`` radians (``(n,)``) counter-clockwise, bilinear (the size of ``degrees`` is
        not used; 0 is refused)."""
        self._require_lie_generator()
        need_2d(x, self.name)
        theta = rotation_theta_radians(t, x.shape[-2], x.shape[-1])
        return warp_ad(x, theta, self.padding, self.name)


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
            return torch.exp(per_sample(rng, "factor", math.log(lo), math.log(hi)))
        return per_sample(rng, "factor", lo, hi)

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        need_2d(x, self.name)
        n = x.shape[0]
        if params is None:
            self._require_fixed()
            if self.factor[0] == 1.0:  # exactly the identity (float32 grid coordinates are not)
                return x.clone()
        f = (torch.full((n,), self.factor[0], dtype=torch.float64, device=x.device) if params is None
             else params.to(device=x.device, dtype=torch.float64))
        return warp(x, zoom_theta(1.0 / f), self.padding, self.name)

    def inverse(self) -> Transform:
        def undo(x: torch.Tensor, params: Any) -> torch.Tensor:
            if params is None:
                self._require_fixed()
                params = torch.full((x.shape[0],), self.factor[0], dtype=torch.float64, device=x.device)
            return self.apply(x, 1.0 / params)

        return Inverted(self, undo)

    def lie_generator_error(self) -> TransformError | None:
        if self.factor != (1.0, 1.0):
            return None
        return TransformError("a zoom by factor 1 does not move, so its Lie derivative would be taken along a "
                              "made-up direction", hint="give any factor other than 1, e.g. factor: 1.1; its size "
                              "does not matter")

    def lie_path(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Zoom by the factor ``exp(t)`` (``(n,)``), bilinear (the size of ``factor`` is not used; 1
        is refused)."""
        self._require_lie_generator()
        need_2d(x, self.name)
        return warp_ad(x, zoom_theta(torch.exp(-t)), self.padding, self.name)
