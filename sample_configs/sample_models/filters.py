"""Image-to-image sample models for equivariance checks whose output is itself an image."""

from __future__ import annotations

import torch
from torch import nn


class GaussianBlur(nn.Module):
    """Isotropic Gaussian blur with circular padding (no trainable weights).

    Exactly equivariant to circular shifts, quarter turns and flips (the kernel is symmetric);
    equivariant to arbitrary rotations only up to the discretisation of the kernel and the
    interpolation of the rotation: the error a `both: {rotate: ...}` check measures.
    """

    def __init__(self, sigma: float = 1.0, size: int = 5) -> None:
        super().__init__()
        r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
        g = torch.exp(-(r**2) / (2 * sigma**2))
        k = g[:, None] * g[None, :]
        self.register_buffer("kernel", (k / k.sum())[None, None])
        self.pad = size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        x = nn.functional.pad(x, (self.pad,) * 4, mode="circular")
        return nn.functional.conv2d(x, self.kernel.expand(c, 1, -1, -1), groups=c)
