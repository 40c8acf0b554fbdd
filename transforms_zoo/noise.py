"""Transforms of intensities, for any tensor: additive Gaussian noise and a gain."""

from __future__ import annotations

from typing import Any

import torch

from transforms_zoo.errors import TransformError, check_rows
from transforms_zoo.params import Param, number_or_range, positive
from transforms_zoo.protocol import Transform
from transforms_zoo.registry import register
from transforms_zoo.random import SampleRNG
from transforms_zoo.sequence import Keys, draw_keys, keyed_rng


def _need_batch(x: torch.Tensor, name: str) -> None:
    if x.dim() < 1:
        raise TransformError(f"'{name}' needs a batch (n, ...), got a 0-dimensional tensor")


@register
class GaussianNoise(Transform):
    """Adds independent N(0, std^2) noise to every element. The noise of sample i is a function of
    (seed, i) and the element's position, so a ``both:`` check adds the same noise on both sides
    when they have the same shape."""

    name = "gaussian_noise"
    summary = "add Gaussian noise N(0, std^2) to every element"
    acts_on = "any tensor"
    params = (Param("std", positive, 0.01, "standard deviation of the noise", "number > 0"),)

    @property
    def is_random(self) -> bool:
        return True

    def sample(self, rng: SampleRNG) -> Keys:
        return draw_keys(rng.child("noise"))

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        _need_batch(x, self.name)
        if not x.is_floating_point():
            raise TransformError(f"'gaussian_noise' needs a floating-point tensor, got {x.dtype}")
        if params is None:
            self._require_fixed()
        rng = keyed_rng(params, x.device, "gaussian_noise")
        check_rows(x, rng.n, self.name)
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        noise = rng.normal(*x.shape[1:], dtype=dtype)
        return x + (self.std * noise).to(x.dtype)


@register
class Gain(Transform):
    """Multiplies every element by ``factor``; a ``[lo, hi]`` range draws it uniformly per sample."""

    name = "gain"
    summary = "multiply by a factor (fixed, or uniform per sample in a range)"
    acts_on = "any tensor"
    params = (Param("factor", number_or_range, doc="multiplier; [lo, hi]: uniform per sample",
                    type_doc="number or [lo, hi]"),)

    @property
    def is_random(self) -> bool:
        return self.factor[0] != self.factor[1]

    def sample(self, rng: SampleRNG) -> torch.Tensor | None:
        """The factors, float64 of shape ``(n,)``."""
        if not self.is_random:
            return None
        lo, hi = self.factor
        return rng.child("factor").uniform(low=lo, high=hi, dtype=torch.float64)

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        _need_batch(x, self.name)
        if params is None:
            self._require_fixed()
            return x * self.factor[0]
        if params.shape[0] != x.shape[0]:
            raise TransformError(f"'gain' got {params.shape[0]} factors for a batch of shape {list(x.shape)}")
        f = params.to(device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float64)
        return x * f.reshape(x.shape[0], *([1] * (x.dim() - 1)))
