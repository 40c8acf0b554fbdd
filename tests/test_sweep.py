"""eqaudit sweep: a check's error as a function of one transform parameter."""

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from eqaudit.cli import app
from eqaudit.errors import EqauditError
from eqaudit.spec import spec_from_dict
from eqaudit.sweep import parse_values, run_sweep

from conftest import write_spec

runner = CliRunner()


class C4Pool(torch.nn.Module):
    """A filter in its four quarter-turn orientations, max over them, global mean: invariant to
    rot90 exactly, not to other angles."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(4, 1, 3, 3))

    def forward(self, x):
        outs = [torch.nn.functional.conv2d(x, torch.rot90(self.w, k, (-2, -1)), padding=1) for k in range(4)]
        return torch.stack(outs).amax(0).mean(dim=(-1, -2))


def test_parse_values():
    assert parse_values("-180:180:90") == [-180, -90, 0, 90, 180]
    assert parse_values("0:1:0.25") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_values("1, 2.5,4") == [1, 2.5, 4]
    for bad in ["", "1:2", "0:10:-1", "0:1:0", "a,b", "0:1e9:1"]:
        with pytest.raises(EqauditError):
            parse_values(bad)


def test_c4_model_has_zero_error_exactly_at_quarter_turns():
    spec = spec_from_dict({"input": {"shape": [1, 9, 9]}, "samples": 128,
                           "checks": [{"name": "rot", "input": {"rotate": {"degrees": 0}}}]})
    result = run_sweep(C4Pool(), spec, "rot", "degrees", parse_values("-180:180:45"))
    by_value = {p.value: p.mean for p in result.points}
    for quarter in (-180, -90, 0, 90, 180):
        assert by_value[quarter] < 1e-5, (quarter, by_value[quarter])  # bilinear at exact quarter turns
    for other in (-135, -45, 45, 135):
        assert by_value[other] > 100 * max(by_value[q] for q in (-180, -90, 0, 90, 180))


def test_sweep_shares_points_across_values():
    class Reader(torch.nn.Module):
        def forward(self, x):
            return x[:, 0, 0, :1]

    spec = spec_from_dict({"input": {"shape": [1, 8, 8]}, "samples": 4000,
                           "checks": [{"name": "s", "input": {"shift": {"dx": 1}}, "distance": "l1"}]})
    result = run_sweep(Reader(), spec, "s", "dx", [0, 1, 2])
    assert result.points[0].mean == 0.0
    for p in result.points[1:]:  # two independent uniform pixels: E|U1 - U2| = 1/3
        assert p.ci_low - 0.01 <= 1 / 3 <= p.ci_high + 0.01


def _spec(project):
    return write_spec(project, """
    model:
      factory: models.py:PixelSum
    input: {shape: [1, 8, 8]}
    samples: 64
    checks:
      - name: rot
        input: {rotate: {degrees: 10}}
    """)


def test_cli_table_json_and_errors(project):
    spec = _spec(project)
    r = runner.invoke(app, ["sweep", "--spec", str(spec), "--check", "rot", "--param", "degrees",
                            "--values", "0,90", "--json", "-"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert [p["value"] for p in data["points"]] == [0, 90] and data["param"] == "degrees"
    r = runner.invoke(app, ["sweep", "--spec", str(spec), "--check", "rot", "--param", "degres", "--values", "1"])
    assert r.exit_code == 2 and "did you mean 'degrees'" in r.stderr
    r = runner.invoke(app, ["sweep", "--spec", str(spec), "--check", "rot", "--param", "padding", "--values", "1"])
    assert r.exit_code == 2 and "--values" in r.stderr


def test_plot_without_matplotlib_is_exit_2(project, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    r = runner.invoke(app, ["sweep", "--spec", str(_spec(project)), "--check", "rot", "--param", "degrees",
                            "--values", "0,90", "--plot", str(tmp_path / "s.png")])
    assert r.exit_code == 2 and "matplotlib" in r.stderr


def test_plot_writes_a_png(project, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "s.png"
    r = runner.invoke(app, ["sweep", "--spec", str(_spec(project)), "--check", "rot", "--param", "degrees",
                            "--values", "-90:90:45", "--plot", str(png), "-q"])
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
