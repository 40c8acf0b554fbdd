"""A small CNN for scikit-learn's 8x8 digits, the model the bundled eqaudit sample audits."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """8x8 grey-scale digit classifier: ``(B, 1, 8, 8)`` images in [0, 1] -> ``(B, 10)`` logits.

    conv3x3(1->c, pad 1) ReLU, conv3x3(c->2c, pad 1) ReLU, max-pool 2 (8x8 -> 4x4),
    conv3x3(2c->2c, no pad; 4x4 -> 2x2) ReLU, global average pool, linear(2c->10).

    Nothing in the architecture makes it rotation- or flip-invariant, and its zero padding breaks
    exact invariance to circular shifts: those are the properties an audit measures.

    Args:
        channels: width ``c`` of the first layer (16 gives about 14k parameters).
    """

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        c = int(channels)
        self.features = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * c, 2 * c, 3),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(2 * c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
