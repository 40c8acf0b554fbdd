"""mask: valid — compare only the region that both transforms keep inside the frame."""

import math

import pytest
import torch

from eqaudit.engine import audit
from eqaudit.errors import EqauditError
from eqaudit.spec import spec_from_dict


def _spec(checks, shape=(1, 8, 8), samples=256):
    return spec_from_dict({"input": {"shape": list(shape)}, "samples": samples, "checks": checks})


def test_zero_padded_shift_of_a_pointwise_model():
    # sigmoid is pointwise, so it commutes with any shift except where zeros enter the frame:
    # there model(shift(x)) = sigmoid(0) = 0.5 while shift(model(x)) = 0. With dx = 2 on 8 columns,
    # 2 x 8 pixels differ by 0.5: the l2 error is 0.5 * sqrt(16) = 2 on every sample, and 0 masked.
    shift = {"shift": {"dx": 2, "mode": "zeros"}}
    report = audit(torch.nn.Sigmoid(), _spec([
        {"name": "plain", "both": shift},
        {"name": "masked", "both": shift, "mask": "valid"},
    ]))
    plain, masked = report.checks
    assert plain.mean == pytest.approx(2.0, abs=1e-6) and plain.std == pytest.approx(0.0, abs=1e-6)
    assert masked.mean == 0.0


def test_random_shifts_mask_per_sample():
    report = audit(torch.nn.Sigmoid(), _spec([
        {"name": "masked", "both": {"shift": {"dx": [-3, 3], "dy": [-3, 3], "mode": "zeros"}}, "mask": "valid"},
    ]))
    assert report.checks[0].mean == 0.0


def test_rotation_mask_removes_the_corners():
    rot = {"rotate": {"degrees": 45}}
    report = audit(torch.nn.Sigmoid(), _spec([
        {"name": "plain", "both": rot},
        {"name": "masked", "both": rot, "mask": "valid"},
    ], shape=(1, 16, 16)))
    plain, masked = report.checks
    # Corners filled with zeros give sigmoid(0) = 0.5 against 0; inside, only interpolation of a
    # nonlinearity differs.
    assert masked.mean < 0.25 * plain.mean


def test_mask_needs_image_outputs_and_sampled_checks():
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.raises(EqauditError, match=r"checks\[0\]\.mask.*image"):
        audit(classifier, _spec([{"input": {"shift": {"dx": 1, "mode": "zeros"}}, "mask": "valid"}]))
    with pytest.raises(EqauditError, match=r"checks\[0\]\.mask.*expected none or valid"):
        _spec([{"input": "hflip", "mask": "inside"}])
    with pytest.raises(EqauditError, match=r"checks\[0\]\.mask"):
        _spec([{"group": "C4", "mask": "valid"}])


def test_mask_none_changes_nothing():
    spec = _spec([{"name": "a", "both": {"shift": {"dx": 1, "mode": "zeros"}}}])
    masked_none = _spec([{"name": "a", "both": {"shift": {"dx": 1, "mode": "zeros"}}, "mask": "none"}])
    assert audit(torch.nn.Sigmoid(), spec).checks == audit(torch.nn.Sigmoid(), masked_none).checks
    assert not math.isnan(audit(torch.nn.Sigmoid(), spec).checks[0].mean)
