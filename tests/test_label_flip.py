"""Decision flips: the ``label_flip`` and ``topk_flip:K`` distances against argmax flips computed
by hand on the bundled digits model, and the Wilson score interval of their 0/1 errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from eqaudit import audit
from eqaudit.cli import app
from eqaudit.engine.distances import parse_distance
from eqaudit.engine.estimator import summarize_values, wilson_interval, z_value
from eqaudit.engine.sampling import PointSampler
from eqaudit.errors import EqauditError
from eqaudit.spec import load_spec, spec_from_dict
from transforms_zoo import SampleRNG

from conftest import write_digits_spec

N = 256


def _spec_file(tmp_path: Path, checks: str, distance: str = "label_flip") -> Path:
    """A spec of the bundled digits model and data with ``checks``."""
    return write_digits_spec(tmp_path / "flips.yaml", checks, distance=distance, samples=N, seed=0)


CHECKS = """  - name: hflip
    input: hflip
  - name: rot90
    input: rot90
  - name: top3-rot90
    input: rot90
    distance: topk_flip:3
"""


def _by_hand(spec_path: Path) -> tuple[torch.Tensor, torch.nn.Module]:
    spec = load_spec(spec_path)
    model = spec.build_model().eval()
    points = PointSampler(spec, torch.device("cpu"), torch.float32).draw(SampleRNG.for_range(spec.seed, 0, N))
    return points, model


def test_flip_rates_equal_the_argmax_flips_counted_by_hand(tmp_path: Path) -> None:
    path = _spec_file(tmp_path, CHECKS)
    x, model = _by_hand(path)
    with torch.no_grad():
        base = model(x)
        flipped = model(torch.flip(x, (-1,)))
        turned = model(torch.rot90(x, 1, (-2, -1)))
    hflips = int((base.argmax(1) != flipped.argmax(1)).sum())
    rflips = int((base.argmax(1) != turned.argmax(1)).sum())
    top3 = turned.topk(3, dim=1).indices, base.topk(3, dim=1).indices
    outside = ~((top3[0] == base.argmax(1, keepdim=True)).any(1) & (top3[1] == turned.argmax(1, keepdim=True)).any(1))
    report = audit(None, path, batch_size=64, noise_floor=False)
    rows = {c.name: c for c in report.checks}
    assert 0 < rflips < N  # the model is not rotation invariant, nor always wrong
    assert rows["hflip"].mean == hflips / N
    assert rows["rot90"].mean == rflips / N
    assert rows["top3-rot90"].mean == int(outside.sum()) / N
    assert rows["top3-rot90"].mean <= rows["rot90"].mean  # a top-3 miss is a top-1 change
    for row, k in ((rows["hflip"], hflips), (rows["rot90"], rflips)):
        assert row.interval == "wilson"
        assert (row.ci_low, row.ci_high) == pytest.approx(_wilson_by_formula(k, N), abs=1e-12)


def test_the_flip_rate_is_the_same_at_any_batch_size(tmp_path: Path) -> None:
    path = _spec_file(tmp_path, CHECKS)
    means = [[c.mean for c in audit(None, path, batch_size=b, noise_floor=False).checks] for b in (64, 256)]
    assert means[0] == means[1]


def _wilson_by_formula(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    z = z_value(confidence)
    p = k / n
    centre = (2 * n * p + z**2) / (2 * (n + z**2))
    half = z * math.sqrt(z**2 + 4 * n * p * (1 - p)) / (2 * (n + z**2))
    return centre - half, centre + half


@pytest.mark.parametrize("k", [0, 37, 100])
def test_wilson_bounds_follow_the_formula(k: int) -> None:
    low, high = wilson_interval(k, 100, 0.95)
    assert (low, high) == pytest.approx(_wilson_by_formula(k, 100), abs=1e-12)
    assert low <= k / 100 <= high and low < high  # never a point, even at 0% and 100%


def test_wilson_at_zero_and_one_hundred_percent_is_not_a_point() -> None:
    z2 = z_value(0.95) ** 2
    assert wilson_interval(0, 50) == pytest.approx((0.0, z2 / (50 + z2)), abs=1e-15)
    assert wilson_interval(50, 50) == pytest.approx((50 / (50 + z2), 1.0), abs=1e-15)
    normal = summarize_values([0.0] * 50)
    assert normal.ci_low == normal.ci_high == 0.0  # what the normal approximation says
    proportion = summarize_values([0.0] * 50).as_proportion()
    assert proportion.interval == "wilson" and proportion.ci_high == pytest.approx(z2 / (50 + z2))


def test_label_flip_is_averaged_over_the_positions_of_dense_outputs() -> None:
    a = torch.zeros(2, 4, 3)  # (n, positions, classes)
    a[..., 0], a[..., 2] = 1.0, 0.5  # classes ranked 0, 2, 1 at every position
    b = a.clone()
    b[0, 1] = torch.tensor([0.0, 5.0, 0.0])  # one of the first sample's 4 positions flips
    b[1, :, 2] = 9.0  # every position of the second sample flips
    assert parse_distance("label_flip")(a, b).tolist() == [0.25, 1.0]
    # top-2: class 1 is outside a's top 2 at that position; class 2 and 0 swap places in the second
    assert parse_distance("topk_flip:2")(a, b).tolist() == [0.25, 0.0]


def test_topk_flip_is_symmetric() -> None:
    a = torch.tensor([[5.0, 4.0, 3.0, 0.0]])
    b = torch.tensor([[0.0, 4.0, 3.0, 5.0]])  # b's top-1 (3) is last in a; a's top-1 (0) is last in b
    assert parse_distance("topk_flip:3")(a, b).tolist() == [1.0]
    assert parse_distance("topk_flip:3")(b, a).tolist() == [1.0]
    assert parse_distance("topk_flip:4")(a, b).tolist() == [0.0]


@pytest.mark.parametrize("text", ["topk_flip:0", "topk_flip:x", "topk_flip:1.5"])
def test_bad_topk_is_refused(text: str) -> None:
    with pytest.raises(EqauditError, match="K must be an integer >= 1"):
        parse_distance(text)


def test_label_flip_on_unlabelled_outputs_is_exit_2_at_the_distance(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("model: {factory: torch.nn:Flatten}\ninput: {shape: [3]}\nsamples: 64\n"
                    "checks:\n  - {input: {gaussian_noise: {std: 0.1}}, distance: topk_flip:5}\n")
    result = CliRunner().invoke(app, ["measure", "--spec", str(spec), "--quiet"])
    assert result.exit_code == 2, result.output
    assert "checks[0].distance" in result.output and "3 classes, fewer than K = 5" in result.output


def test_the_cli_reports_the_flip_rate_with_its_wilson_interval(tmp_path: Path) -> None:
    path = _spec_file(tmp_path, "  - name: hflip\n    input: hflip\n    threshold: 1\n"
                                "  - name: shift\n    input: {shift: {dx: 1}}\n    distance: relative_l2\n"
                                "    threshold: 1\n")
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["measure", "--spec", str(path), "--json", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    flip, shift = json.loads(out.read_text())["checks"]
    x, model = _by_hand(path)
    with torch.no_grad():
        k = int((model(x).argmax(1) != model(torch.flip(x, (-1,))).argmax(1)).sum())
    assert flip["distance"] == "label_flip" and flip["mean"] == k / N
    assert flip["interval"] == "wilson"
    assert [flip["ci_low"], flip["ci_high"]] == pytest.approx(_wilson_by_formula(k, N), abs=1e-12)
    assert "interval" not in shift  # the normal approximation, as before


def test_fractional_flip_rates_of_dense_outputs_keep_the_normal_interval(tmp_path: Path) -> None:
    """Per-sample rates averaged over positions are not 0/1: no Wilson interval for them."""
    spec = tmp_path / "dense.yaml"
    spec.write_text("model: {factory: torch.nn:Identity}\ninput: {shape: [16, 3]}\nsamples: 128\n"
                    "distance: label_flip\nchecks:\n  - {input: {gaussian_noise: {std: 0.3}}, threshold: 1}\n")
    row = audit(None, spec, batch_size=64, noise_floor=False).checks[0]
    assert 0 < row.mean < 1 and row.interval == "normal"
    assert row.ci_low == pytest.approx(row.mean - z_value(0.95) * row.stderr, abs=1e-12)


class SignedSum(torch.nn.Module):
    """Two logits, the pixel sum and its negative: invariant to rot90, so its label never flips."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x.sum(dim=(-1, -2, -3)), -x.sum(dim=(-1, -2, -3))], dim=-1)


def _rot90_flip_spec(**check: object) -> object:
    """64 samples of 1x4x4 points and one label_flip check of rot90 named "flip"."""
    return spec_from_dict({"input": {"shape": [1, 4, 4]}, "samples": 64, "checks": [
        {"name": "flip", "input": "rot90", "distance": "label_flip", **check}]})


def test_sequential_sampling_of_a_flip_rate_uses_its_wilson_width() -> None:
    """No flips in 64 samples: the normal interval has width 0 and --precision stopped at once;
    the reported (Wilson) half-width of about 2/n keeps sampling until it is within the target."""
    report = audit(SignedSum(), _rot90_flip_spec(), precision=0.01, noise_floor=False)
    c = report.checks[0]
    assert c.mean == 0.0 and report.samples > 64
    assert (c.ci_high - c.ci_low) / 2 <= 0.01


def test_the_hints_run_for_a_flip_rate_that_fails_on_its_wilson_bound(monkeypatch) -> None:
    """No flips in 64 samples under gate upper: the normal upper bound is 0, the reported Wilson
    bound about 0.057 > 0.01, so the check fails, and the inverted-output hints see it failing (they
    judged the normal bound and skipped it)."""
    from eqaudit.engine import run

    seen = []
    real = run.inverse_hints
    monkeypatch.setattr(run, "inverse_hints", lambda block, failing: seen.append(list(failing)) or real(block, failing))
    report = audit(SignedSum(), _rot90_flip_spec(threshold=0.01), gate="upper", noise_floor=False)
    assert report.checks[0].mean == 0.0 and not report.checks[0].passed
    assert seen == [[True]]
