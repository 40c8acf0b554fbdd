"""Property-based audits: specs generated from the zoo's grammar run end to end on tiny models
whose errors are known, and the audit keeps its promises on every one of them (no exception but
a located EqauditError, same numbers for the same spec and seed, any batch size, exact zeros
where the model is exactly equivariant)."""

from __future__ import annotations

import math
from typing import Any

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eqaudit import audit
from eqaudit.errors import EqauditError
from eqaudit.spec import spec_from_dict

SETTINGS = settings(deadline=None, max_examples=40, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


class Clone(torch.nn.Module):
    """f(x) = x: equivariant to every transform applied to both sides with the same draw."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


class PixelSum(torch.nn.Module):
    """Sums each channel over H and W: invariant to every permutation of the pixels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=(-1, -2))


class Mixer(torch.nn.Module):
    """A fixed random linear map of the whole image: equivariant to nothing."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.weight = torch.nn.Parameter(torch.randn(3, numel, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T


#: Transforms that permute pixels exactly (on a square image): PixelSum is invariant to them.
PERMUTING = st.sampled_from([
    "rot90", "hflip", "vflip", {"rot90": {"k": 2}}, {"shift": {"dx": 1, "dy": 0}},
    {"shift": {"dx": [-2, 2], "dy": [-1, 1]}}, {"roll": {"shift": [-2, 2], "dim": -1}},
])
ANY = PERMUTING | st.sampled_from([
    {"rotate": {"degrees": [-30, 30]}}, {"rotate": {"degrees": 45}}, {"gain": {"factor": [0.5, 2.0]}},
    {"gaussian_noise": {"std": 0.1}}, {"scale": {"factor": [0.8, 1.2]}},
])
DISTANCES = st.sampled_from(["l1", "l2", "linf", "lp:3", "relative_l2"])


@st.composite
def specs(draw: Any, transforms: Any = ANY, both: bool | None = None, subsets: bool = True) -> dict[str, Any]:
    """A valid spec of 1-3 checks on a square image of 1-2 channels."""
    side = draw(st.sampled_from([4, 6]))
    checks = []
    for i in range(draw(st.integers(1, 3))):
        t = draw(transforms)
        on_both = draw(st.booleans()) if both is None else both
        check: dict[str, Any] = {"name": f"c{i}", "distance": draw(DISTANCES)}
        check.update({"both": t} if on_both else {"input": t, "output": "identity"})
        checks.append(check)
    num_funcs = draw(st.sampled_from(["all", 1])) if subsets and len(checks) > 1 else "all"
    return {
        "input": {"shape": [draw(st.integers(1, 2)), side, side], "bounds": [0, 1],
                  "sampling": draw(st.sampled_from(["random", "sobol"]))},
        "samples": draw(st.integers(1, 150)),
        "num_funcs": num_funcs,
        "seed": draw(st.integers(0, 2**32)),
        "checks": checks,
    }


def _numbers(report: Any) -> list[tuple[float, ...]]:
    return [(c.n, c.mean, c.std, c.max) for c in report.checks]


def _same(a: list[tuple[float, ...]], b: list[tuple[float, ...]]) -> bool:
    return all(x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y))
               for ra, rb in zip(a, b) for x, y in zip(ra, rb))


@SETTINGS
@given(data=specs(), model_kind=st.sampled_from(["clone", "sum", "mixer"]))
def test_generated_specs_run_and_repeat_exactly(data: dict[str, Any], model_kind: str) -> None:
    """Every generated spec either audits or fails with a located EqauditError; the same spec and
    seed give the same numbers, whatever the batch size; the report's figures are consistent."""
    spec = spec_from_dict(data)
    numel = math.prod(data["input"]["shape"])
    model = {"clone": Clone(), "sum": PixelSum(), "mixer": Mixer(numel)}[model_kind]
    try:
        first = audit(model, spec, noise_floor=False)
    except EqauditError as exc:
        assert exc.key or exc.file, f"an error without a location: {exc}"
        return
    again = audit(model, spec, noise_floor=False, batch_size=64)
    assert _same(_numbers(first), _numbers(again))
    assert [c.error for c in first.checks] == [c.error for c in again.checks]
    for c in first.checks:
        if c.error is not None:  # a check that cannot run is its own row, located at its key
            assert "checks[" in c.error and first.exit_code == 2 and not c.passed
            continue
        assert 0 < c.n <= data["samples"]
        if data["num_funcs"] == "all":
            assert c.n == data["samples"]
        assert c.mean >= 0 and c.max >= c.mean - 1e-12
        if c.n > 1:
            assert c.ci_low <= c.mean <= c.ci_high
        assert c.passed == (c.mean <= c.threshold)


@SETTINGS
@given(data=specs(both=True, subsets=False))
def test_identity_model_is_exactly_equivariant_to_any_shared_draw(data: dict[str, Any]) -> None:
    """f(x) = x with the same draw on both sides: f_out(f(x)) and f(f_in(x)) are the same tensor."""
    report = audit(Clone(), spec_from_dict(data), noise_floor=False)
    assert [c.mean for c in report.checks] == [0.0] * len(report.checks)


@SETTINGS
@given(data=specs(transforms=PERMUTING, both=False, subsets=False))
def test_pixel_sum_is_invariant_to_pixel_permutations(data: dict[str, Any]) -> None:
    """Sums over permuted pixels differ only by float32 rounding of the summation order."""
    report = audit(PixelSum(), spec_from_dict(data), noise_floor=False)
    for c in report.checks:
        assert c.max <= 1e-5, (c.name, c.input, c.max)
        assert c.passed or c.threshold < 1e-5
