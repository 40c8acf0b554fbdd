"""A tiny fine-tune project for the fine-tune tests: a linear model on 1x4x4 images, a synthetic
data set, a checkpoint and a config template."""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from eqaudit.cli import app

runner = CliRunner()

MODELS = textwrap.dedent(
    """
    import os, time
    import torch

    class Tiny(torch.nn.Module):
        '''Linear classifier on a flattened 1x4x4 image; optionally slow (for the kill tests).'''
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(16, 2)
            self.calls = 0
            self.delay = float(os.environ.get("EQAUDIT_TEST_SLOW_FORWARD", "0"))
        def forward(self, x):
            self.calls += 1
            if self.delay:
                time.sleep(self.delay)
            return self.fc(x.flatten(1))
    """
)

CONFIG = """\
model:
  factory: models.py:Tiny
  checkpoint: tiny.safetensors
input:
  shape: [1, 4, 4]
  bounds: [0, 1]
samples: 256
seed: 3
checks:
  - name: hflip
    input: hflip
    threshold: {threshold}
  - name: rot90
    input: rot90
    threshold: {threshold}
    weight: 0.5
data:
  path: data.safetensors
  inputs: x
  targets: y
  val_inputs: vx
  val_targets: vy
optimizer: {{name: adam, lr: 0.05}}
steps: {steps}
batch_size: 16
regularizer:
  points: {points}
output:
  checkpoint: out/tuned.safetensors
checkpoint_every: {every}
log_every: 5
"""


def make_project(folder: Path) -> Path:
    """models.py, a tiny synthetic data set (top-vs-bottom brightness: hflip-invariant) and a checkpoint."""
    (folder / "models.py").write_text(MODELS)
    g = torch.Generator().manual_seed(0)

    def split(n):
        x = torch.rand(n, 1, 4, 4, generator=g)
        y = (x[:, 0, :2].sum((1, 2)) > x[:, 0, 2:].sum((1, 2))).long()
        return x, y

    x, y = split(96)
    vx, vy = split(64)
    save_file({"x": x, "y": y, "vx": vx, "vy": vy}, str(folder / "data.safetensors"))
    torch.manual_seed(1)
    lin = torch.nn.Linear(16, 2)
    save_file({f"fc.{k}": v for k, v in lin.state_dict().items()}, str(folder / "tiny.safetensors"))
    return folder


def write(proj: Path, *, steps=30, points="data", every=10, threshold=100.0, extra="", name="ft.yaml") -> Path:
    p = proj / name
    p.write_text(CONFIG.format(steps=steps, points=points, every=every, threshold=threshold) + extra)
    return p


def cli(*args):
    return runner.invoke(app, ["finetune", *[str(a) for a in args]])


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))
