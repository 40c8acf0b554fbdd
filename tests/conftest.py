"""Shared fixtures: tiny models whose equivariance errors are known in closed form."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch


class PixelReader(torch.nn.Module):
    """Returns pixel (0, 0) of channel 0: under a shift it compares two independent U(0,1) pixels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, :1]


class PixelSum(torch.nn.Module):
    """Sum over H and W: invariant to every permutation of pixels (rot90, flips, circular shifts)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=(-1, -2))


@pytest.fixture
def pixel_reader() -> torch.nn.Module:
    return PixelReader()


@pytest.fixture
def pixel_sum() -> torch.nn.Module:
    return PixelSum()


MODELS_PY = textwrap.dedent(
    """
    import torch

    class PixelReader(torch.nn.Module):
        def forward(self, x):
            return x[:, 0, 0, :1]

    class PixelSum(torch.nn.Module):
        def forward(self, x):
            return x.sum(dim=(-1, -2))

    class Linear(torch.nn.Module):
        def __init__(self, n=16, out=4):
            super().__init__()
            self.fc = torch.nn.Linear(n, out)
        def forward(self, x):
            return self.fc(x.flatten(1))

    class NaNModel(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1) / 0.0 * 0.0
    """
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder with a models.py that specs can name as 'models.py:PixelReader'."""
    (tmp_path / "models.py").write_text(MODELS_PY)
    return tmp_path


def write_spec(folder: Path, text: str, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path
