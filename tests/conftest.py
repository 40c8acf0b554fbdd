"""Shared fixtures: tiny models whose equivariance errors are known in closed form, and a counter
of reads back to the host (what would stall a GPU)."""

from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from torch.overrides import TorchFunctionMode


class PixelReader(torch.nn.Module):
    """Returns pixel (0, 0) of channel 0: under a shift it compares two independent U(0,1) pixels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, :1]


class PixelSum(torch.nn.Module):
    """Sum over H and W: invariant to every permutation of pixels (rot90, flips, circular shifts)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=(-1, -2))


class HostReads(TorchFunctionMode):
    """Counts the calls that wait for a device's result on the host: scalar and list reads, truth
    values, copies to the host, and ops whose output shape depends on the data."""

    READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__,
             torch.Tensor.__int__, torch.Tensor.__index__, torch.Tensor.cpu, torch.Tensor.numpy,
             torch.nonzero, torch.Tensor.nonzero, torch.argwhere, torch.masked_select,
             torch.Tensor.masked_select, torch.unique, torch.Tensor.unique, torch.equal, torch.allclose}

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.READS:
            self.reads[func.__name__] += 1
        elif func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__):
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index):
                self.reads["boolean index"] += 1
        elif func is torch.where and len(args) == 1:
            self.reads["where(cond)"] += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture
def host_reads() -> HostReads:
    """A mode that counts host reads while active (``with host_reads: ...``; ``host_reads.reads``)."""
    return HostReads()


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


SAMPLES = Path(__file__).resolve().parent.parent / "sample_configs"


def write_digits_spec(path: Path, checks: str, *, distance: str, samples: int, seed: int) -> Path:
    """A spec of the bundled digits model and data (sample_configs/digits.yaml's) with ``checks``
    (YAML list items, indented two spaces) at ``path``."""
    path.write_text(f"""
model:
  factory: {SAMPLES / 'sample_models' / 'digits.py'}:SmallCNN
  kwargs: {{channels: 16}}
  checkpoint: {SAMPLES / 'digits_cnn.safetensors'}
input:
  data: {SAMPLES / 'digits.safetensors'}:val_images
distance: {distance}
samples: {samples}
seed: {seed}
checks:
{checks}
""")
    return path


TINY_CNN_PY = textwrap.dedent(
    """
    import torch


    class TinyCNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular")
            self.head = torch.nn.Conv2d(4, 1, 1)

        def forward(self, x):
            return self.head(torch.tanh(self.conv(x)))


    def two_channels(x):  # an input transform that doubles the channels: a check that cannot run
        return torch.cat([x, x], dim=1)
    """
)

#: The spec of the tiny-CNN project (``make_project``): two loose checks of a non-equivariant model.
SPEC = {
    "model": {"factory": "tiny_model.py:TinyCNN"},
    "input": {"shape": [1, 8, 8], "bounds": [0, 1]},
    "samples": 256,
    "checks": [
        {"name": "rot", "both": "rot90", "threshold": 10.0},
        {"name": "flip", "both": "hflip", "threshold": 10.0},
    ],
}


def make_project(folder: Path, spec: dict | None = None, delta: float = 0.3) -> dict[str, Path]:
    """A tiny CNN (``tiny_model.py:TinyCNN``; ``tiny_model.py:two_channels`` is an input transform
    that cannot run), its spec (``spec`` or ``SPEC``), and three checkpoints: ``a``, ``same`` (a
    copy of a) and ``perturbed`` (one weight of the first layer moved by ``delta``)."""
    from safetensors.torch import save_file

    (folder / "tiny_model.py").write_text(TINY_CNN_PY, encoding="utf-8")
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec or SPEC), encoding="utf-8")
    torch.manual_seed(0)
    conv, head = torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 1, 1)
    weights = {"conv.weight": conv.weight.detach().clone(), "conv.bias": conv.bias.detach().clone(),
               "head.weight": head.weight.detach().clone(), "head.bias": head.bias.detach().clone()}
    moved = weights["conv.weight"].clone()
    moved[0, 0, 0, 0] += delta
    paths = {"spec": folder / "spec.yaml", "a": folder / "a.safetensors", "same": folder / "same.safetensors",
             "perturbed": folder / "perturbed.safetensors"}
    save_file(weights, str(paths["a"]))
    save_file(weights, str(paths["same"]))
    save_file({**weights, "conv.weight": moved}, str(paths["perturbed"]))
    return paths
