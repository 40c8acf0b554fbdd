"""``mode: lie`` along a path that stands still is refused at its key: a shift by (0, 0) gave the
same number as dx: 1 (its direction was made up), a rotation by 0 degrees or a zoom by 1 the
derivative of a path the spec did not ask for."""

from __future__ import annotations

import pytest
import torch

import transforms_zoo as tz
from eqaudit.errors import EqauditError
from eqaudit.spec import spec_from_dict
from transforms_zoo import TransformError


def _spec(check: dict):
    return spec_from_dict({"input": {"shape": [1, 6, 6]}, "checks": [{**check, "mode": "lie"}]})


@pytest.mark.parametrize("check, key, words", [
    ({"both": {"shift": {"dx": 0, "dy": 0}}}, "checks[0].both.shift", "no direction"),
    ({"input": {"shift": {"dx": 0}}}, "checks[0].input.shift", "no direction"),
    ({"input": "shift"}, "checks[0].input", "no direction"),
    ({"input": {"rotate": {"degrees": 0}}}, "checks[0].input.rotate", "0 degrees"),
    ({"input": {"scale": {"factor": 1}}}, "checks[0].input.scale", "factor 1"),
    ({"both": {"rotate3d": {"axis": [0, 0, 1], "degrees": 0}}}, "checks[0].both.rotate3d.degrees", "0 degrees"),
    ({"both": {"rotate3d": {}}}, "checks[0].both.rotate3d.axis", "fixed 'axis'"),
    ({"both": "identity"}, "checks[0].both", "does not move"),
    ({"input": {"shift": {"dx": 1}}, "output": {"shift": {"dy": 0}}}, "checks[0].output.shift", "no direction"),
])
def test_a_zero_generator_is_an_error_at_its_key(check, key, words):
    with pytest.raises(EqauditError) as info:
        _spec(check)
    assert info.value.key == key and words in info.value.message
    assert info.value.hint or "axis" in key


@pytest.mark.parametrize("check", [
    {"both": {"shift": {"dx": 1}}},
    {"both": {"shift": {"dx": 0, "dy": -2}}},
    {"input": {"rotate": {"degrees": 1}}},
    {"input": {"rotate": {"degrees": [-10, 10]}}},
    {"input": {"scale": {"factor": 0.9}}},
    {"both": {"rotate3d": {"axis": [1, 0, 0], "degrees": 5}}},
    {"input": {"shift": {"dx": 1}}, "output": "identity"},
])
def test_paths_that_move_are_accepted(check):
    assert _spec(check).checks[0].mode == "lie"


def test_the_transforms_refuse_a_zero_path_themselves():
    x = torch.rand(2, 1, 6, 6)
    t = torch.zeros(2)
    for config in ({"shift": {"dx": 0}}, {"rotate": {"degrees": 0}}, {"scale": {"factor": 1}}):
        with pytest.raises(TransformError):
            tz.build(config).lie_path(x, t)
    moved = tz.build({"shift": {"dy": 3}}).lie_path(x, torch.ones(2))
    assert torch.allclose(moved, torch.roll(x, 1, dims=-2), atol=1e-5)


def test_a_shift_range_differentiates_along_its_own_axis():
    """``shift: {dy: [-2, 2]}`` was differentiated along x, a direction the spec never named."""
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    t = torch.full((3,), 1.0, dtype=torch.float64)
    along_y = tz.build({"shift": {"dy": [-2, 2]}}).lie_path(x, t)
    assert torch.allclose(along_y, torch.roll(x, 1, dims=-2), atol=1e-9)
    along_x = tz.build({"shift": {"dx": [-2, 2]}}).lie_path(x, t)
    assert torch.allclose(along_x, torch.roll(x, 1, dims=-1), atol=1e-9)
    with pytest.raises(EqauditError) as info:
        _spec({"both": {"shift": {"dx": [-1, 1], "dy": [-1, 1]}}})
    assert info.value.key == "checks[0].both.shift" and "no single direction" in info.value.message
