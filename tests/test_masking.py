"""mask: valid — compare only the region that both transforms keep inside the frame."""

import math
import re

import pytest
import torch

from eqaudit.engine.run import audit
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
    report = audit(classifier, _spec([{"input": {"shift": {"dx": 1, "mode": "zeros"}}, "mask": "valid"}]))
    assert report.exit_code == 2 and re.search(r"checks\[0\]\.mask.*image", report.checks[0].error)  # its error row
    with pytest.raises(EqauditError, match=r"checks\[0\]\.mask.*expected none or valid"):
        _spec([{"input": "hflip", "mask": "inside"}])
    with pytest.raises(EqauditError, match=r"checks\[0\]\.mask"):
        _spec([{"group": "C4", "mask": "valid"}])


def test_mask_none_changes_nothing():
    spec = _spec([{"name": "a", "both": {"shift": {"dx": 1, "mode": "zeros"}}}])
    masked_none = _spec([{"name": "a", "both": {"shift": {"dx": 1, "mode": "zeros"}}, "mask": "none"}])
    assert audit(torch.nn.Sigmoid(), spec).checks == audit(torch.nn.Sigmoid(), masked_none).checks
    assert not math.isnan(audit(torch.nn.Sigmoid(), spec).checks[0].mean)


def test_zoom_out_mask_and_relative_l2():
    # Zooming out by 1/2 about the centre fills the border with zeros. An affine pointwise model
    # commutes with bilinear interpolation wherever every tap lies in frame (the weights sum to
    # 1), and differs on the border (f(0) = 1 against 0): masked relative_l2 is 0 up to rounding.
    class Affine(torch.nn.Module):
        def forward(self, x):
            return 2 * x + 1

    zoom = {"scale": {"factor": 0.5}}
    report = audit(Affine(), _spec([
        {"name": "plain", "both": zoom, "distance": "relative_l2"},
        {"name": "masked", "both": zoom, "distance": "relative_l2", "mask": "valid"},
    ], shape=(2, 8, 8)))
    plain, masked = report.checks
    assert plain.mean > 0.05
    assert masked.mean < 1e-6


def test_output_transform_mask_and_report_fields():
    # input and output written separately: the region kept by the output transform is masked too
    shift = {"shift": {"dx": -3, "dy": 1, "mode": "zeros"}}
    report = audit(torch.nn.Tanh(), _spec([{"name": "m", "input": shift, "output": shift, "mask": "valid"}]))
    assert report.checks[0].mean == 0.0
    data = report.to_dict()["checks"][0]
    assert data["mask"] == "valid"
    assert "(mask: valid)" in report.to_markdown()
    plain = audit(torch.nn.Tanh(), _spec([{"name": "p", "input": shift, "output": shift}]))
    assert plain.to_dict()["checks"][0]["mask"] == "none" and "mask" not in plain.to_markdown()


def test_inverse_hint_respects_the_mask():
    # A pointwise model with the output shifted the wrong way: the inverse fits exactly inside the
    # valid region, so the hint appears even though the zero-filled border differs.
    report = audit(torch.nn.Tanh(), _spec([{"name": "m", "input": {"shift": {"dx": 2, "mode": "zeros"}},
                                            "output": {"shift": {"dx": -2, "mode": "zeros"}}, "mask": "valid"}]))
    assert report.checks[0].hint is not None
