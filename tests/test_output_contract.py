"""Model outputs the audit cannot take at face value: complex numbers are compared as complex
numbers, empty outputs and batch-dependent widths are refused naming the model, and an error deep
in a check's comparison still names the spec and the check."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import eqaudit.engine.evaluate as evaluate
from eqaudit.engine.run import audit
from eqaudit.errors import EqauditError
from eqaudit.spec import spec_from_dict


def _spec(checks, shape=(1, 6, 6), samples=128):
    return spec_from_dict({"input": {"shape": list(shape)}, "samples": samples, "checks": checks})


class Spectrum(nn.Module):
    """The 2-D Fourier transform: complex outputs; a circular shift multiplies them by a phase."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.fft2(x)


def test_complex_outputs_are_compared_as_complex_numbers() -> None:
    spec = _spec([{"name": "phase", "input": {"shift": {"dx": 3, "dy": 3}}}])  # output: identity
    real_only = audit(lambda t: torch.fft.fft2(t).real, spec, noise_floor=False).checks[0].mean
    full = audit(Spectrum(), spec, noise_floor=False).checks[0].mean
    assert full > real_only > 0  # the imaginary part counts: |z - w| >= |Re z - Re w|


def test_complex_outputs_give_the_exact_complex_distance() -> None:
    spec = _spec([{"name": "shift", "input": {"shift": {"dx": 1, "dy": 0}}}], samples=64)
    report = audit(Spectrum(), spec, noise_floor=False)
    from eqaudit.engine.sampling import PointSampler
    from transforms_zoo import SampleRNG

    x = PointSampler(spec, torch.device("cpu"), torch.float32).draw(SampleRNG.for_range(spec.seed, 0, 64))
    a, b = torch.fft.fft2(x).to(torch.complex128), torch.fft.fft2(torch.roll(x, 1, -1)).to(torch.complex128)
    expected = torch.linalg.vector_norm((a - b).flatten(1), dim=1).mean().item()
    assert report.checks[0].mean == pytest.approx(expected, rel=1e-12)


def test_complex_weights_with_real_points() -> None:
    class ComplexLinear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.w = nn.Parameter(torch.randn(6, 6, dtype=torch.cfloat))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.to(torch.cfloat) @ self.w

    check = audit(ComplexLinear(), _spec([{"both": "hflip"}])).checks[0]
    assert check.error is None and check.n == 128 and check.mean > 0


def test_a_model_with_empty_outputs_is_refused() -> None:
    with pytest.raises(EqauditError, match=r"no elements per sample \(shape \[\d+, 0\]\)") as info:
        audit(lambda x: x.flatten(1)[:, :0], _spec([{"input": "rot90", "threshold": 0.0}]))
    assert info.value.key == "input.shape"


class BatchWide(nn.Module):
    """An output as wide as the batch: sample i's output depends on how many others it came with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :1].expand(x.shape[0], x.shape[0])


@pytest.mark.parametrize("checks", [[{"input": "hflip"}],
                                    [{"name": "a", "input": "hflip"}, {"name": "b", "input": "vflip"}]])
def test_an_output_width_that_depends_on_the_batch_names_the_model(checks) -> None:
    with pytest.raises(EqauditError, match=r"the model \(BatchWide\) returns outputs of shape \[\d+\] per sample "
                                           r"for a batch of \d+ but \[\d+\] for a batch of \d+") as info:
        audit(BatchWide(), _spec(checks, samples=64))
    assert info.value.key == "model"


def test_a_mask_whose_output_transform_resizes_names_the_check() -> None:
    spec = _spec([{"name": "r", "input": "rot90", "output": "rot90", "mask": "valid"},
                  {"name": "ok", "input": "hflip", "output": "hflip"}], shape=(1, 8, 6), samples=64)
    report = audit(nn.Identity(), spec)
    assert "checks[0].mask" in report.checks[0].error and "[6, 8] to [8, 6]" in report.checks[0].error
    assert report.checks[1].error is None and report.checks[1].mean == 0.0 and report.exit_code == 2


def test_an_unexpected_error_in_one_check_names_the_spec_and_the_check(tmp_path, monkeypatch) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("input: {shape: [1, 6, 6]}\nsamples: 64\nchecks:\n  - {name: a, input: hflip}\n"
                         "  - {name: b, input: vflip}\n")
    inner = evaluate._Context.output_side

    def output_side(self, item, y):
        if item.check_index == 1:
            raise RuntimeError("The size of tensor a (7) must match the size of tensor b (8)")
        return inner(self, item, y)

    monkeypatch.setattr(evaluate._Context, "output_side", output_side)
    report = audit(nn.Identity(), spec_file)
    error = report.checks[1].error
    assert error.startswith(f"{spec_file}:") and "checks[1]" in error and "size of tensor a (7)" in error
    assert report.checks[0].error is None and report.exit_code == 2
