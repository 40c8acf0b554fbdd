"""Thresholds that follow the dtype: a check without ``threshold`` and ``epsilon`` is gated at
``atol + rtol * scale`` for the output dtype (an exactly invariant float32 model failed on rounding
noise when it was gated at 0); an explicit ``threshold: 0`` stays 0; the report says which."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from eqaudit import audit
from eqaudit.cli import app
from eqaudit.engine.sampling import PointSampler
from eqaudit.spec import spec_from_dict
from transforms_zoo import SampleRNG

from conftest import write_spec


class PixelSum(torch.nn.Module):
    """Invariant to rot90 up to the rounding of the summation order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=(-1, -2)) * 10.0


def _spec(**check: object) -> object:
    return spec_from_dict({"input": {"shape": [2, 8, 8]}, "samples": 256, "checks": [{"input": "rot90", **check}]})


def test_a_check_without_threshold_follows_the_output_dtype() -> None:
    spec = _spec(name="rot90")
    report = audit(PixelSum(), spec, noise_floor=False)
    c = report.checks[0]
    x = PointSampler(spec, torch.device("cpu"), torch.float32).draw(SampleRNG.for_range(spec.seed, 0, 128, "cpu"))
    scale = float(PixelSum()(x).double().norm(dim=-1).mean())  # l2 size of the outputs on the first 128 points
    assert 0 < c.mean < c.threshold
    assert abs(c.threshold - (1e-5 + 1e-5 * scale)) <= 1e-12 * scale
    assert c.threshold_source == "dtype" and c.passed and report.exit_code == 0
    assert any("check 'rot90': threshold" in n and "float32 outputs" in n for n in report.notes)


class Scaled64(torch.nn.Module):
    """A float64 model (its parameter's dtype): float64 points and outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(10.0, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=(-1, -2)) * self.gain


def test_float64_outputs_get_the_float64_tolerance() -> None:
    report = audit(Scaled64(), _spec(name="rot90"), noise_floor=False)
    c = report.checks[0]
    assert c.threshold_source == "dtype" and c.threshold < 1e-7 and c.passed


def test_an_explicit_zero_threshold_stays_zero() -> None:
    c = audit(PixelSum(), _spec(threshold=0), noise_floor=False).checks[0]
    assert c.threshold == 0.0 and c.threshold_source == "spec" and not c.passed


def test_epsilon_alone_is_the_threshold() -> None:
    c = audit(PixelSum(), _spec(epsilon=0.5), noise_floor=False).checks[0]
    assert c.threshold == 0.5 and c.threshold_source == "epsilon"


def test_the_json_report_says_where_each_threshold_comes_from(project: Path) -> None:
    spec = write_spec(project, """
        model: {factory: models.py:PixelSum}
        input: {shape: [1, 8, 8]}
        samples: 128
        checks:
          - {name: derived, input: rot90}
          - {name: own, input: hflip, threshold: 0.1}
    """)
    out = project / "r.json"
    result = CliRunner().invoke(app, ["measure", "--spec", str(spec), "--json", str(out), "-q"])
    assert result.exit_code == 0, result.output
    checks = json.loads(out.read_text())["checks"]
    assert [c["threshold_source"] for c in checks] == ["dtype", "spec"]
