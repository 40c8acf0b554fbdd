"""Per-layer attribution: the first layer that breaks a symmetry is the one reported."""

import pytest
import torch
from torch import nn

from eqaudit.engine import audit
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
    return spec_from_dict({"input": {"shape": [1, 8, 8]}, "samples": 128, "layers": layers, "checks": checks,
                           **extra})


def _means(report, check=0):
    return {row["name"]: row.get("mean") for row in report.checks[check].layers}


def test_circular_network_is_shift_equivariant_at_every_layer():
    means = _means(audit(_net(None), _spec("all")))
    assert set(means) == {str(i) for i in range(8)}
    assert all(m < 1e-12 for m in means.values()), means


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


def test_hooks_are_removed_after_the_audit():
    net = _net(None)
    audit(net, _spec("all"))
    assert all(not m._forward_hooks for m in net.modules())
