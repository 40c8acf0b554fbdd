"""eqaudit.testing.assert_equivariant: spec forms, dtype tolerances, failure messages, defaults."""

from __future__ import annotations

import re
import sys
import traceback

import pytest
import torch

from eqaudit.errors import EqauditError
from eqaudit.spec import spec_from_dict
from eqaudit.testing import (
    TOLERANCES,
    EquivarianceAssertionError,
    assert_equivariant,
    current_defaults,
    default_tolerance,
    defaults,
)

from conftest import PixelReader, PixelSum, write_spec


class Scaled(torch.nn.Module):
    """PixelSum times a constant: the rot90 error grows with the output scale."""

    def __init__(self, factor: float, leak: float = 0.0) -> None:
        super().__init__()
        self.factor, self.leak = factor, leak

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.factor * (x.sum(dim=(-1, -2)) + self.leak * x[..., 0, 0])


def test_passing_model_returns_the_report():
    report = assert_equivariant(PixelSum(), [{"input": "rot90"}, {"input": "hflip"}], shape=[1, 8, 8], samples=64)
    assert report.passed and len(report.checks) == 2 and report.samples == 64
    assert all(c.threshold > 0 for c in report.checks)  # default tolerances were filled in


def test_failure_message_has_the_failing_check_and_a_plain_table():
    with pytest.raises(AssertionError) as info:
        assert_equivariant(PixelReader(), [{"name": "quarter-turn", "input": "rot90"},
                                           {"name": "loose", "input": "hflip", "threshold": 10}],
                           shape=[1, 8, 8], samples=64)
    msg = str(info.value)
    assert isinstance(info.value, EquivarianceAssertionError)
    assert "1 of 2 checks" in msg and "quarter-turn" in msg and "FAIL" in msg and "PASS" in msg
    assert "float32 outputs" in msg and "rtol" in msg
    assert "\x1b[" not in msg  # no ANSI escapes
    failing = [line for line in msg.splitlines() if line.startswith("  - ")]
    assert len(failing) == 1 and "loose" not in failing[0]
    assert info.value.report.checks[0].passed is False and info.value.report.checks[1].passed is True


def test_traceback_hides_the_helper_frame():
    with pytest.raises(AssertionError) as info:
        assert_equivariant(PixelReader(), [{"input": "rot90"}], shape=[1, 4, 4], samples=64)
    frames = [e for e in info.traceback if e.frame.code.name == "assert_equivariant"]
    assert frames and all(e.frame.f_locals.get("__tracebackhide__") is True for e in frames)


def test_no_assert_statements_in_the_helpers():
    import ast
    from pathlib import Path

    import eqaudit.pytest_plugin
    import eqaudit.testing

    for mod in (eqaudit.testing, eqaudit.pytest_plugin):
        tree = ast.parse(Path(mod.__file__).read_text())
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.Assert)], mod.__name__


def test_no_assert_statements_for_runtime_checks():
    # python -O strips assert statements: the helper must fail the same way without them.
    import subprocess

    code = (
        "import torch\n"
        "from eqaudit.testing import assert_equivariant\n"
        "class R(torch.nn.Module):\n"
        "    def forward(self, x): return x[:, 0, 0, :1]\n"
        "try:\n"
        "    assert_equivariant(R(), [{'input': 'rot90'}], shape=[1, 4, 4], samples=64)\n"
        "except AssertionError as e:\n"
        "    print('raised', type(e).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, check=True)
    assert "raised EquivarianceAssertionError" in out.stdout


@pytest.mark.parametrize("dtype,name", [(torch.float32, "float32"), (torch.float64, "float64")])
def test_tolerance_follows_the_dtype(dtype, name):
    model = Scaled(1.0).to(dtype)
    report = assert_equivariant(model, [{"input": "rot90"}], shape=[1, 6, 6], samples=64, dtype=name)
    c = report.checks[0]
    scale = 18.0  # E[sum of 36 U(0,1)] = 18: the L2 norm of the one-element output
    assert c.threshold == pytest.approx(TOLERANCES[name] * (1 + scale), rel=0.1)
    assert c.mean < c.threshold


def test_float32_is_looser_than_float64_and_half_precisions_looser_still():
    assert TOLERANCES["float64"] < TOLERANCES["float32"] < TOLERANCES["float16"] <= TOLERANCES["bfloat16"]
    assert default_tolerance(torch.float32) == TOLERANCES["float32"]
    assert default_tolerance("bfloat16") == TOLERANCES["bfloat16"]
    assert default_tolerance(torch.int64) == TOLERANCES["float32"]


def test_a_float32_rounding_error_fails_in_float64_but_passes_in_float32():
    # A leak of 1e-7 (float32 rounding size) is an error for a float64 model, noise for float32.
    shape = [1, 6, 6]
    assert_equivariant(Scaled(1.0, leak=1e-7).float(), [{"input": "rot90"}], shape=shape, samples=64)
    with pytest.raises(AssertionError, match="float64 outputs"):
        assert_equivariant(Scaled(1.0, leak=1e-7).double(), [{"input": "rot90"}], shape=shape, samples=64,
                           dtype="float64")


def test_tolerance_is_relative_to_the_output_scale():
    # The same relative leak passes at any output scale, a fixed absolute one would not.
    for factor in (1e-3, 1.0, 1e4):
        assert_equivariant(Scaled(factor, leak=1e-8).double(), [{"input": "rot90"}], shape=[1, 6, 6],
                           samples=64, dtype="float64", rtol=1e-8)


def test_explicit_atol_rtol_and_own_thresholds():
    checks = [{"name": "tol", "input": "rot90"}, {"name": "own", "input": "hflip", "threshold": 0.5}]
    report = assert_equivariant(Scaled(1.0), checks, shape=[1, 4, 4], samples=64, atol=0.25, rtol=0.0)
    assert report.check("tol").threshold == 0.25 and report.check("own").threshold == 0.5
    with pytest.raises(AssertionError, match="tol"):
        assert_equivariant(Scaled(1.0, leak=1.0), checks[:1], shape=[1, 4, 4], samples=64, atol=1e-3, rtol=0)


def test_relative_distances_use_scale_one():
    report = assert_equivariant(Scaled(1000.0), [{"input": "rot90", "distance": "relative_l2"}],
                                shape=[1, 4, 4], samples=64)
    assert report.checks[0].threshold == pytest.approx(2 * TOLERANCES["float32"])


def test_spec_mapping_file_and_object(project):
    spec = {"input": {"shape": [1, 5, 5]}, "samples": 64, "seed": 3, "checks": [{"input": "rot90"}]}
    r1 = assert_equivariant(PixelSum(), spec)
    path = write_spec(project, """
    model: {factory: models.py:PixelSum}
    input: {shape: [1, 5, 5]}
    samples: 64
    seed: 3
    checks: [{input: rot90}]
    """)
    r2 = assert_equivariant(PixelSum(), path)
    r3 = assert_equivariant(PixelSum(), str(path))
    r4 = assert_equivariant(None, path)  # built from the spec's model block
    r5 = assert_equivariant(PixelSum(), spec_from_dict(spec))
    means = {r.checks[0].mean for r in (r1, r2, r3, r4, r5)}
    assert len(means) == 1 and r1.seed == 3 and r1.samples == 64


def test_spec_object_with_its_own_threshold_keeps_it():
    spec = spec_from_dict({"input": {"shape": [1, 4, 4]}, "samples": 64,
                           "checks": [{"input": "rot90", "threshold": 0.125}]})
    assert assert_equivariant(PixelSum(), spec).checks[0].threshold == 0.125


def test_samples_and_seed_arguments_override_the_spec():
    spec = {"input": {"shape": [1, 4, 4]}, "samples": 1000, "seed": 1, "checks": [{"input": "rot90"}]}
    report = assert_equivariant(PixelSum(), spec, samples=64, seed=9)
    assert (report.samples, report.seed) == (64, 9)


def test_bad_specs_raise_eqaudit_errors_not_assertions():
    with pytest.raises(EqauditError, match="unknown transform 'rot9'"):
        assert_equivariant(PixelSum(), [{"input": "rot9"}], shape=[1, 4, 4])
    with pytest.raises(TypeError, match="shape="):
        assert_equivariant(PixelSum(), [{"input": "rot90"}])
    with pytest.raises(TypeError, match="only apply to a list of checks"):
        assert_equivariant(PixelSum(), {"input": {"shape": [1, 4, 4]}, "checks": [{"input": "rot90"}]},
                           shape=[1, 4, 4])
    with pytest.raises(TypeError, match="did you mean 'samples'"):
        assert_equivariant(PixelSum(), [{"input": "rot90"}], shape=[1, 4, 4], sample=3)
    with pytest.raises(TypeError, match="samples must be"):
        assert_equivariant(PixelSum(), [{"input": "rot90"}], shape=[1, 4, 4], samples=0)
    with pytest.raises(TypeError):
        assert_equivariant(PixelSum(), 42)


def test_shapes_and_bounds_as_tuples_and_tensors():
    report = assert_equivariant(PixelSum(), [{"input": "rot90"}], shape=(1, 4, 4), bounds=torch.tensor([-1.0, 1.0]),
                                samples=64, batch_size=64, confidence=0.9)
    assert report.passed and report.checks[0].confidence == 0.9


def test_defaults_context_and_precedence():
    with defaults(samples=64, seed=5):
        r = assert_equivariant(PixelSum(), [{"input": "rot90"}], shape=[1, 4, 4])
        assert (r.samples, r.seed) == (64, 5)
        with defaults(seed=6):
            assert current_defaults()["seed"] == 6 and current_defaults()["samples"] == 64
            r = assert_equivariant(PixelSum(), [{"input": "rot90"}], shape=[1, 4, 4], seed=7)
            assert (r.samples, r.seed) == (64, 7)  # the call's own argument wins
    with pytest.raises(TypeError, match="unknown option"):
        with defaults(sample=3):
            pass


def test_nonfinite_outputs_are_a_clear_error():
    class NaNModel(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1) / 0.0 * 0.0

    with pytest.raises(EqauditError, match="not finite"):
        assert_equivariant(NaNModel(), [{"input": "rot90", "threshold": 1.0}], shape=[1, 4, 4], samples=64)
    with pytest.raises(EqauditError, match="not finite"):
        assert_equivariant(NaNModel(), [{"input": "rot90"}], shape=[1, 4, 4], samples=64)


def test_e3nn_model_with_assert_equivariant():
    o3 = pytest.importorskip("e3nn.o3")
    torch.manual_seed(0)
    tp = o3.FullyConnectedTensorProduct("1x0e + 1x1o", "1x0e + 1x1o", "1x0e + 1x1o + 1x2e")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tp = tp

        def forward(self, pos):
            f = torch.cat([pos.norm(dim=-1, keepdim=True), pos], dim=-1)
            return self.tp(f, f).mean(dim=-2)

    report = assert_equivariant(Net(), [{"both": {"irreps": {"irreps": "1x0e + 1x1o + 1x2e"}}}],
                                shape=[4, 3], bounds=[-1, 1], samples=128)
    assert report.passed
    with pytest.raises(AssertionError):  # rotating the inputs only: the outputs are not invariant
        assert_equivariant(Net(), [{"input": "rotate3d"}], shape=[4, 3], bounds=[-1, 1], samples=128)


def test_traceback_of_failure_is_short():
    try:
        assert_equivariant(PixelReader(), [{"input": "rot90"}], shape=[1, 4, 4], samples=64)
    except AssertionError:
        text = traceback.format_exc()
    assert re.search(r"EquivarianceAssertionError: model is not equivariant", text)


def test_complex_outputs_get_a_default_threshold_from_their_modulus():
    # the output scale of complex outputs: their full modulus (a cast to float dropped the imaginary part,
    # with a UserWarning that filterwarnings=error turns into a failure)
    report = assert_equivariant(lambda x: torch.fft.fft2(x) * 1j, [{"input": "identity"}], shape=[1, 4, 4],
                                samples=64)
    assert report.checks[0].threshold > 0 and report.checks[0].mean == 0.0
