"""Per-layer attribution: the first layer that breaks a symmetry is the one reported."""

import pytest
import torch
from torch import nn

from eqaudit.engine.run import audit
from eqaudit.errors import EqauditError
from eqaudit.spec import spec_from_dict


def _net(break_at: int | None) -> nn.Sequential:
    """Four 3x3 convolutions with tanh; circular padding is exactly shift-equivariant, zero
    padding at layer ``break_at`` is not."""
    torch.manual_seed(0)
    layers = []
    for i in range(4):
        mode = "zeros" if i == break_at else "circular"
        layers += [nn.Conv2d(2 if i else 1, 2, 3, padding=1, padding_mode=mode), nn.Tanh()]
    return nn.Sequential(*layers).double()


def _spec(layers, checks=None, **extra):
    checks = checks or [{"name": "shift", "both": {"shift": {"dx": [-3, 3], "dy": [-3, 3]}}}]
    return spec_from_dict({"input": {"shape": [1, 8, 8]}, "samples": 128, "layers": layers, "checks": checks}
                          | extra)


def _means(report, check=0):
    return {row["name"]: row.get("mean") for row in report.checks[check].layers}


def test_circular_network_is_shift_equivariant_at_every_layer():
    means = _means(audit(_net(None), _spec("all")))
    assert set(means) == {str(i) for i in range(8)}
    assert all(m < 1e-12 for m in means.values()), means


def test_a_lie_check_before_a_sampled_one_leaves_its_per_layer_errors_alone():
    shift = {"name": "shift", "both": {"shift": {"dx": [-3, 3], "dy": [-3, 3]}}}
    lie = {"name": "lie", "input": {"shift": {"dx": 1}}, "mode": "lie", "distance": "l1"}
    alone = _means(audit(_net(None), _spec(["0"], [shift])))
    after = _means(audit(_net(None), _spec(["0"], [lie, shift])), check=1)
    assert after["0"] < 1e-12 and after == pytest.approx(alone, abs=1e-12)


def test_zero_padding_breaks_from_its_layer_on():
    means = _means(audit(_net(2), _spec(["0", "1", "2", "3", "4", "6"])))
    # conv 2 (module "4") is the zero-padded one: earlier maps are exact, it and later ones are not
    assert means["0"] < 1e-12 and means["1"] < 1e-12 and means["2"] < 1e-12 and means["3"] < 1e-12
    assert means["4"] > 1e-3 and means["6"] > 1e-3


def test_flips_on_feature_maps_and_skipped_checks():
    spec = _spec(["0"], checks=[{"name": "flip", "both": "hflip"},
                                {"name": "rot", "both": {"rotate": {"degrees": 30}}}])
    report = audit(_net(None), spec)
    flip, rot = report.checks
    assert flip.layers[0]["name"] == "0" and "mean" in flip.layers[0]
    assert rot.layers is None
    assert any("rot" in n for n in report.notes)
    assert report.to_json()  # nested values serialise


def test_unknown_layer_names_are_exit_2_with_a_suggestion():
    with pytest.raises(EqauditError, match=r"layers\[0\].*no module 'O'"):
        audit(_net(None), _spec(["O"]))
    with pytest.raises(EqauditError, match="layers"):
        _spec("some")
    with pytest.raises(EqauditError, match=r"layers\[1\]"):
        _spec(["0", [1]])


def test_hooks_are_removed_after_the_audit():
    net = _net(None)
    audit(net, _spec("all"))
    assert all(not m._forward_hooks for m in net.modules())


def _strided_net() -> nn.Sequential:
    """Circular convolutions around a stride-2 circular convolution (8x8 -> 4x4), then a linear
    head: shifting the input by an even number of pixels shifts the 4x4 maps by half as many."""
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular"), nn.Tanh(),              # 0, 1: 8x8
        nn.Conv2d(2, 2, 3, stride=2, padding=1, padding_mode="circular"), nn.Tanh(),    # 2, 3: 4x4
        nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular"),                         # 4: 4x4
        nn.Flatten(), nn.Linear(32, 3),                                                 # 5, 6: not maps
    ).double()


def test_shifts_act_on_strided_maps_when_the_stride_divides_them():
    spec = _spec("all", checks=[{"name": "s", "input": {"shift": {"dx": [-2, 2], "dy": [-2, 2]}}}], samples=256)
    report = audit(_strided_net(), spec)
    rows = {row["name"]: row for row in report.checks[0].layers}
    assert set(rows) == {"0", "1", "2", "3", "4"}  # "all": only (N, C, H, W) outputs; Flatten/Linear left out
    for name in ("0", "1"):  # full size: every sample
        assert rows[name]["n"] == 256 and rows[name]["mean"] < 1e-12 and "stride" not in rows[name]
    # stride 2: only samples with even dx and dy count (3 of 5 values each), and they are exact
    even = [r for r in rows.values() if "stride" in r]
    assert {r["name"] for r in even} == {"2", "3", "4"}
    for r in even:
        assert r["stride"] == [2, 2] and 0 < r["n"] < 256 and r["mean"] < 1e-12
    assert abs(rows["2"]["n"] / 256 - 9 / 25) < 0.15
    assert report.checks[0].mean > 1e-3  # the linear head is not shift-invariant


def test_odd_shifts_skip_strided_maps_with_the_reason():
    spec = _spec(["1", "3"], checks=[{"name": "s", "both": {"shift": {"dx": 1}}}])
    net = _strided_net()[:4]
    rows = {row["name"]: row for row in audit(net, spec).checks[0].layers}
    assert rows["1"]["mean"] < 1e-12
    assert "stride 2x2" in rows["3"]["skipped"]
    spec = _spec(["3"], checks=[{"name": "s", "both": {"shift": {"dx": 1}}}], input={"shape": [1, 9, 9]})
    rows = {row["name"]: row for row in audit(net, spec).checks[0].layers}  # 9x9 -> 5x5: no integer stride
    assert "does not divide" in rows["3"]["skipped"]


def test_cli_layers_table_json_and_unknown_names(tmp_path):
    import json
    import textwrap

    from typer.testing import CliRunner

    from eqaudit.cli import app

    (tmp_path / "net.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def build():
            torch.manual_seed(0)
            return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular"), nn.Tanh(),
                                 nn.Conv2d(2, 1, 3, padding=1))
    """))
    spec = tmp_path / "spec.yaml"
    body = """model: {{factory: net.py:build}}
input: {{shape: [1, 8, 8]}}
samples: 64
layers: {layers}
checks:
  - {{name: shift, both: {{shift: {{dx: 2}}}}, threshold: 10}}
"""
    spec.write_text(body.format(layers="[\"0\", \"1\", \"2\"]"))
    runner = CliRunner()
    r = runner.invoke(app, ["measure", "--spec", str(spec), "--layers"])
    assert r.exit_code == 0, r.output
    assert "per-layer" in r.stdout
    r = runner.invoke(app, ["measure", "--spec", str(spec), "--json", "-"])
    rows = json.loads(r.stdout)["checks"][0]["layers"]
    assert [row["name"] for row in rows] == ["0", "1", "2"]
    assert rows[0]["mean"] < 1e-6 and rows[2]["mean"] > 1e-3 and {"n", "ci_low", "ci_high"} <= set(rows[0])
    spec.write_text(body.format(layers="[0, tanh]"))  # integers name nn.Sequential children
    r = runner.invoke(app, ["measure", "--spec", str(spec)])
    assert r.exit_code == 2
    assert "layers[1]" in r.stderr and "no module 'tanh'" in r.stderr and ":4" in r.stderr
