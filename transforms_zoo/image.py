"""Transforms of images and feature maps: the last two dimensions are (H, W)."""

from __future__ import annotations

from typing import Any

import torch

from .base import Param, Transform, TransformError, integer, register


def _need_2d(x: torch.Tensor, name: str) -> None:
    if x.dim() < 3:
        raise TransformError(
            f"'{name}' acts on the last two dimensions (H, W) of each sample, "
            f"but the batch has shape {tuple(x.shape)}"
        )


@register
class Identity(Transform):
    name = "identity"
    summary = "leave the tensor unchanged (the output side of an invariance check)"

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        return x


@register
class Rot90(Transform):
    name = "rot90"
    summary = "rotate by k quarter turns counter-clockwise: torch.rot90(x, k, (-2, -1))"
    acts_on = "image (..., H, W)"
    params = (Param("k", integer, 1, "number of quarter turns (negative: clockwise)", "int"),)

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        _need_2d(x, self.name)
        return torch.rot90(x, self.k, (-2, -1))


@register
class HFlip(Transform):
    name = "hflip"
    summary = "mirror left-right (reverse the last dimension, W)"
    acts_on = "image (..., H, W)"

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        _need_2d(x, self.name)
        return torch.flip(x, (-1,))


@register
class VFlip(Transform):
    name = "vflip"
    summary = "mirror top-bottom (reverse the second-to-last dimension, H)"
    acts_on = "image (..., H, W)"

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        _need_2d(x, self.name)
        return torch.flip(x, (-2,))
