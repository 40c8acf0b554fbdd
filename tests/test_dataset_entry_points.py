"""``input.dataset`` reaches every entry point: ``assert_equivariant`` accepts it as a keyword,
and a fine-tune whose audit points come from a dataset needs no ``input.shape`` for random
penalty points (the shape is the data's)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from eqaudit.finetune import config_from_dict
from eqaudit.testing import assert_equivariant

from conftest import PixelSum

DATASET_PY = textwrap.dedent(
    """
    import torch

    def images():
        gen = torch.Generator().manual_seed(0)
        return torch.utils.data.TensorDataset(torch.rand(12, 1, 4, 4, generator=gen))
    """
)


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    """A folder whose ds.py:images is a dataset of 12 one-channel 4x4 images."""
    (tmp_path / "ds.py").write_text(DATASET_PY)
    return tmp_path


def test_assert_equivariant_takes_a_dataset(dataset_dir: Path) -> None:
    report = assert_equivariant(PixelSum(), [{"input": "rot90"}], dataset=str(dataset_dir / "ds.py") + ":images",
                                samples=16)
    assert report.checks[0].n == 16 and report.checks[0].max <= 1e-6


def test_random_penalty_points_take_the_shape_of_an_input_dataset(dataset_dir: Path) -> None:
    from safetensors.torch import save_file

    save_file({"x": torch.rand(8, 1, 4, 4), "y": torch.randint(0, 2, (8,))}, str(dataset_dir / "train.safetensors"))
    cfg = config_from_dict({
        "model": {"factory": "torch.nn:Flatten"},
        "input": {"dataset": "ds.py:images"},
        "checks": [{"input": "rot90", "weight": 1.0}],
        "data": {"path": "train.safetensors", "inputs": "x", "targets": "y"},
        "regularizer": {"points": "random"},
        "steps": 1,
        "output": {"checkpoint": "out.safetensors"},
    }, base_dir=dataset_dir)
    assert cfg.regularizer.points == "random" and cfg.spec.input.dataset is not None
