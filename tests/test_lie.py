"""Issue 4, item 1: Lie derivatives by forward-mode AD, against closed forms and finite differences."""

import math

import pytest
import torch

from eqaudit.engine.lie import lie_derivative
from eqaudit.engine.run import audit
from eqaudit.engine.sampling import PointSampler
from eqaudit.errors import EqauditError
from eqaudit.engine.estimator import summarize_values
from eqaudit.spec import spec_from_dict
from transforms_zoo import SampleRNG


def _spec(checks, samples=256, shape=(1, 8, 8), **extra):
    return spec_from_dict({"input": {"shape": list(shape)}, "samples": samples, "checks": checks, **extra})


def _finite_difference(model, check, x, h=1e-7):
    t_out = check.input if check.both else (None if check.output.name == "identity" else check.output)

    def g(t):
        tt = torch.full((x.shape[0],), t, dtype=x.dtype)
        y = model(check.input.lie_path(x, tt))
        return t_out.lie_path(y, -tt) if t_out is not None else y

    return (g(h) - g(-h)) / (2 * h)


class PointFunctional(torch.nn.Module):
    """f(x) = sum_p a . x_p: under rotation about axis u, d/dt f = sum_p a . (u x x_p)."""

    def __init__(self):
        super().__init__()
        self.a = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)

    def forward(self, x):
        return (x @ self.a).sum(-1, keepdim=True)


def test_rotate3d_lie_derivative_is_the_closed_form():
    spec = spec_from_dict({"input": {"shape": [5, 3], "bounds": [-1, 1], "dtype": "float64"}, "samples": 512,
                        "checks": [{"name": "r", "input": {"rotate3d": {"axis": [0, 0, 2], "degrees": 10}},
                                    "mode": "lie", "distance": "l1", "threshold": 10}]})
    model = PointFunctional()
    x = PointSampler(spec, torch.device("cpu"), torch.float64).draw(SampleRNG.for_range(0, 0, 512))
    u = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    closed = (torch.cross(u.expand_as(x), x, dim=-1) @ model.a).sum(-1)
    d = lie_derivative(model, spec.checks[0], x)[:, 0]
    torch.testing.assert_close(d, closed)
    report = audit(model, spec)
    assert report.checks[0].mean == pytest.approx(summarize_values(closed.abs()).mean, rel=1e-12)


def test_fourier_shift_derivative_is_the_spectral_derivative(pixel_reader):
    spec = _spec([{"name": "s", "input": {"shift": {"dx": 1}}, "mode": "lie"}])
    x = torch.rand(16, 1, 8, 8, dtype=torch.float64)
    d = lie_derivative(pixel_reader, spec.checks[0], x)[:, 0]
    fx = torch.fft.fftfreq(8, dtype=torch.float64)
    deriv = torch.fft.ifft(torch.fft.fft(x, dim=-1) * (2j * math.pi * fx), dim=-1).real
    torch.testing.assert_close(d, -deriv[:, 0, 0, 0])
    # dy: the derivative along rows
    spec = _spec([{"name": "s", "input": {"shift": {"dy": 3}}, "mode": "lie"}])
    d = lie_derivative(pixel_reader, spec.checks[0], x)[:, 0]
    deriv = torch.fft.ifft(torch.fft.fft(x, dim=-2) * (2j * math.pi * fx[:, None]), dim=-2).real
    torch.testing.assert_close(d, -deriv[:, 0, 0, 0])


def _cnn(padding_mode="circular", act=torch.nn.Tanh):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1, padding_mode=padding_mode), act(),
        torch.nn.Conv2d(4, 1, 3, padding=1, padding_mode=padding_mode),
    ).double()


def test_circular_cnn_has_zero_shift_lie_derivative():
    spec = spec_from_dict({"input": {"shape": [1, 8, 8], "dtype": "float64"}, "samples": 128,
                           "checks": [{"name": "s", "both": {"shift": {"dx": 1, "dy": 1}}, "mode": "lie"},
                                      {"name": "inv", "input": {"shift": {"dx": 1}}, "mode": "lie"}]})
    # A circular convolution commutes with every (Fourier) translation, sub-pixel ones included.
    report = audit(_cnn(act=torch.nn.Identity), spec)
    assert report.checks[0].mean < 1e-10
    assert report.checks[1].mean > 0.1  # not invariant
    # A pointwise nonlinearity breaks sub-pixel equivariance (aliasing): the Lie derivative sees it
    # although every integer circular shift commutes with the network.
    assert audit(_cnn(), spec).checks[0].mean > 1e-3
    shifted = _spec([{"both": {"shift": {"dx": 1, "dy": 1}}}], samples=64)
    assert audit(_cnn().float(), shifted).checks[0].mean < 1e-5


@pytest.mark.parametrize("transform", [{"rotate": {"degrees": 1}}, {"scale": {"factor": 2}},
                                       {"shift": {"dx": 2, "dy": -1}}, {"rotate": {"degrees": 1, "padding": "border"}}])
def test_jvp_matches_finite_differences(transform):
    model = _cnn("zeros")
    spec = spec_from_dict({"input": {"shape": [1, 8, 8], "dtype": "float64"}, "samples": 64,
                           "checks": [{"name": "a", "both": transform, "mode": "lie"},
                                      {"name": "b", "input": transform, "mode": "lie"}]})
    x = torch.rand(8, 1, 8, 8, dtype=torch.float64)
    for check in spec.checks:
        d = lie_derivative(model, check, x)
        fd = _finite_difference(model, check, x)
        # Bilinear paths are piecewise linear: the central difference is exact up to O(h) cross terms.
        torch.testing.assert_close(d, fd, rtol=1e-4, atol=1e-5)


def test_lie_checks_are_batch_size_invariant_and_mix_with_other_checks(pixel_reader):
    spec = _spec([{"name": "lie", "input": {"rotate": {"degrees": 1}}, "mode": "lie"}, {"input": "hflip"}],
                 samples=500)
    a, b = audit(pixel_reader, spec, batch_size=64), audit(pixel_reader, spec, batch_size=512)
    assert a.to_dict()["checks"] == b.to_dict()["checks"]
    c = a.checks[0]
    assert c.ci_low < c.mean < c.ci_high and c.n == 500


def test_lie_spec_errors():
    with pytest.raises(EqauditError, match=r"checks\[0\]\.input: transform hflip declares no one-parameter path"):
        _spec([{"input": "hflip", "mode": "lie"}])
    with pytest.raises(EqauditError, match=r"checks\[0\]\.mode: expected sample or lie"):
        _spec([{"input": "hflip", "mode": "lei"}])
    with pytest.raises(EqauditError, match=r"checks\[0\]\.distance: 'mode: lie' takes the norm"):
        _spec([{"input": {"shift": {"dx": 1}}, "mode": "lie", "distance": "kl_logits"}])
    with pytest.raises(EqauditError, match=r"checks\[0\]\.mode: 'mode: lie'"):
        _spec([{"group": "C4", "mode": "lie"}])
    with pytest.raises(EqauditError, match=r"checks\[0\]\.input: .*fixed 'axis'"):
        audit(torch.nn.Identity(), _spec([{"input": "rotate3d", "mode": "lie"}], shape=(4, 3)))
