"""Issue 4, item 5: quantiles, noise floor, --precision EPS, Sobol points, the inverse hint."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from eqaudit.cli import app
from eqaudit.engine.run import audit
from eqaudit.errors import ArgumentError, EqauditError
from eqaudit.engine.estimator import BlockStats, quantiles, summarize_values
from eqaudit.spec import spec_from_dict

from conftest import write_spec


def _spec(checks, samples=2000, shape=(1, 8, 8), **extra):
    inp = {"shape": list(shape), **extra.pop("input", {})}
    return spec_from_dict({"input": inp, "samples": samples, "checks": checks, **extra})


# -- quantiles ------------------------------------------------------------------------------------
def test_quantiles_of_the_triangular_distribution(pixel_reader):
    # |U1 - U2| has CDF 1 - (1 - d)^2: the q-quantile is 1 - sqrt(1 - q).
    spec = _spec([{"name": "flip", "input": "hflip", "distance": "l1", "threshold": 1.0}], samples=40000)
    c = audit(pixel_reader, spec).checks[0]
    for q, got in [(0.5, c.p50), (0.95, c.p95), (0.99, c.p99)]:
        # sample quantile: std sqrt(q (1 - q) / n) / density, density 2 sqrt(1 - q) there
        sigma = math.sqrt(q / c.quantile_n) / 2
        assert got == pytest.approx(1 - math.sqrt(1 - q), abs=4 * sigma)
    from eqaudit.engine.estimator import QUANTILE_CAP

    assert c.quantile_n == min(40000, QUANTILE_CAP)  # beyond the cap: the first QUANTILE_CAP samples
    assert c.p50 <= c.p95 <= c.p99 <= c.max


def test_quantiles_are_exact_and_independent_of_chunking():
    n, cap = 1000, 300
    values = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = quantiles(values[:cap])
    for chunk in (64, 320, 1024):
        stats = BlockStats(n, 1, keep_values=cap)
        padded = torch.cat([values, torch.zeros(1088 - n, dtype=torch.float64)])
        mask = torch.arange(1088) < n
        for start in range(0, 1088, chunk):
            stop = min(start + chunk, 1088)
            stats.update(0, start, padded[start:stop], mask[start:stop])
        s = stats.summary(0)
        assert (s.p50, s.p95, s.p99, s.quantile_n) == ref
    full = summarize_values(values)
    assert full.p50 == float(torch.quantile(values, 0.5))
    assert full.quantile_n == n


def test_grown_stats_equal_a_direct_run():
    values = torch.rand(640, dtype=torch.float64)
    direct = BlockStats(600, 1)
    for start in range(0, 640, 64):
        direct.update(0, start, values[start:start + 64], torch.arange(start, start + 64) < 600)
    small = BlockStats(300, 1)
    for start in range(0, 320, 64):
        small.update(0, start, values[start:start + 64], torch.arange(start, start + 64) < 300)
    grown = small.grown(600)
    grown.clear_from(256)  # the partial block is redone whole
    for start in range(256, 640, 64):
        grown.update(0, start, values[start:start + 64], torch.arange(start, start + 64) < 600)
    assert grown.summary(0) == direct.summary(0)


# -- noise floor --------------------------------------------------------------------------------
def test_noise_floor_of_a_deterministic_model_is_zero(pixel_reader):
    report = audit(pixel_reader, _spec([{"input": "hflip"}], samples=256))
    assert report.noise_floor == 0.0 and report.checks[0].noise_floor == 0.0
    assert "noise floor 0" in report.footer()
    assert report.to_dict()["noise_floor"] == 0.0


def test_noise_floor_measures_nondeterminism():
    class Noisy(torch.nn.Module):
        def forward(self, x):
            return x[:, 0, 0, :1] + 1e-3 * torch.rand(x.shape[0], 1)

    torch.manual_seed(0)
    report = audit(Noisy(), _spec([{"input": "hflip", "distance": "l1", "threshold": 1}], samples=256))
    # |1e-3 (U1 - U2)| has mean 1e-3 / 3 (on 64 points: loose bounds).
    assert 1e-4 < report.noise_floor < 6e-4


# -- --precision EPS ------------------------------------------------------------------------------
def test_precision_eps_samples_until_the_half_width_is_reached(pixel_reader):
    spec = _spec([{"name": "flip", "input": "hflip", "distance": "l1", "threshold": 1.0}], samples=256)
    report = audit(pixel_reader, spec, precision=0.01)
    c = report.checks[0]
    assert (c.ci_high - c.ci_low) / 2 <= 0.01
    # half-width 1.96 * sqrt(1/18) / sqrt(n) <= 0.01 needs n >= ~2134
    assert 1800 <= report.samples <= 16 * 256 and c.n == report.samples
    assert report.to_dict()["target_halfwidth"] == 0.01
    # The result is the plain audit of that many samples: sample i depends on (seed, i) only.
    plain = audit(pixel_reader, spec, samples=report.samples, batch_size=64)
    assert plain.to_dict()["checks"] == report.to_dict()["checks"]


def test_precision_eps_stops_at_the_cap(pixel_reader):
    spec = _spec([{"input": "hflip", "distance": "l1", "threshold": 1.0}], samples=100)
    report = audit(pixel_reader, spec, precision="0.001", max_samples=500)
    assert report.samples == 500 and report.checks[0].n == 500
    assert any("NOT reached" in n for n in report.notes)


def test_precision_bad_values(pixel_reader):
    spec = _spec([{"input": "hflip"}], samples=64)
    for bad in ("-1", "0", "fp8", "nan"):
        with pytest.raises(ArgumentError, match="precision") as info:
            audit(pixel_reader, spec, precision=bad)
        assert info.value.argument == "precision"  # the Python parameter; the CLI says --precision
    with pytest.raises(ArgumentError, match="max_samples caps sequential sampling") as info:
        audit(pixel_reader, spec, max_samples=100)
    assert info.value.argument == "max_samples"


# -- Sobol ----------------------------------------------------------------------------------------
def test_sobol_points_are_the_sobol_sequence_whatever_the_chunking(pixel_reader):
    spec = _spec([{"input": "hflip", "distance": "l1", "threshold": 1.0}], samples=1000,
                 input={"sampling": "sobol", "bounds": [-1, 1]})
    a, b = audit(pixel_reader, spec, batch_size=64), audit(pixel_reader, spec, batch_size=1024)
    assert a.to_dict()["checks"] == b.to_dict()["checks"]
    assert a.sampling == "sobol" and any("Sobol" in n for n in a.notes)
    # E|U1 - U2| for U ~ U(-1, 1) is 2/3.
    assert a.checks[0].mean == pytest.approx(2 / 3, abs=0.01)
    from eqaudit.engine.sampling import PointSampler
    from transforms_zoo import SampleRNG

    sampler = PointSampler(spec, torch.device("cpu"), torch.float64)
    x = sampler.draw(SampleRNG.for_range(0, 128, 192))
    eng = torch.quasirandom.SobolEngine(64, scramble=True, seed=0)
    ref = eng.draw(192, dtype=torch.float64)[128:]
    torch.testing.assert_close(x.reshape(64, 64), -1 + 2 * ref)


def test_sobol_spec_errors(tmp_path):
    with pytest.raises(EqauditError, match=r"input\.sampling.*sequential"):
        spec_from_dict({"input": {"shape": [4], "sampling": "sequential"}, "checks": [{"input": "identity"}]})
    with pytest.raises(EqauditError, match="did you mean 'sobol'"):
        spec_from_dict({"input": {"shape": [4], "sampling": "sobl"}, "checks": [{"input": "identity"}]})


# -- inverse hint ---------------------------------------------------------------------------------
class Transpose(torch.nn.Module):
    """f(x) = x^T: a reflection, so f(R x) = R^-1 f(x) for a rotation R."""

    def forward(self, x):
        return x.transpose(-1, -2)


def test_inverse_hint_for_a_rot90_direction_mistake():
    spec = _spec([{"name": "r", "both": "rot90"}, {"name": "ok", "input": "rot90", "output": {"rot90": {"k": -1}}}],
                 samples=128)
    report = audit(Transpose(), spec)
    r, ok = report.checks
    assert not r.passed and ok.passed
    assert r.hint and "rot90(k=-1)" in r.hint and "may be inverted" in r.hint
    assert ok.hint is None
    assert any("may be inverted" in n for n in report.notes)


def test_no_inverse_hint_when_the_inverse_does_not_fit():
    class Ramp(torch.nn.Module):
        def forward(self, x):
            return x * torch.arange(x.shape[-1], dtype=x.dtype)

    spec = _spec([{"input": "rot90", "output": "rot90"}], samples=128)
    c = audit(Ramp(), spec).checks[0]
    assert not c.passed and c.hint is None


# -- CLI ------------------------------------------------------------------------------------------
SPEC = """
model:
  factory: models.py:PixelReader
input:
  shape: [1, 8, 8]
samples: 128
checks:
  - name: flip
    input: hflip
    distance: l1
    threshold: 1.0
"""


def test_cli_precision_eps_and_quantiles(project):
    spec = write_spec(project, SPEC)
    r = CliRunner().invoke(app, ["measure", "--spec", str(spec), "--precision", "0.02", "--json", "-"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    c = data["checks"][0]
    assert data["samples"] > 128 and c["n"] == data["samples"]
    assert (c["ci_high"] - c["ci_low"]) / 2 <= 0.02
    for key in ("p50", "p95", "p99", "max", "noise_floor", "quantile_n"):
        assert key in c
    r = CliRunner().invoke(app, ["measure", "--spec", str(spec), "--quantiles"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "p95" in r.output and "noise floor" in r.output
    r = CliRunner().invoke(app, ["measure", "--spec", str(spec), "--precision", "-3"])
    assert r.exit_code == 2 and "--precision" in r.output
    r = CliRunner().invoke(app, ["measure", "--spec", str(spec), "--max-samples", "10"])
    assert r.exit_code == 2 and "--max-samples" in r.output


@pytest.mark.parametrize("numpy_path", [True, False])
@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 101, 4096])
def test_column_quantiles_equal_torch_quantile_bit_for_bit(n, numpy_path, monkeypatch):
    """On the host the order statistics come from one numpy partition, elsewhere (or without
    numpy) from topk and kthvalue: both equal torch.quantile exactly."""
    import numpy

    from eqaudit.engine.estimator import QUANTILES, column_quantiles

    if not numpy_path:
        def unavailable(*_args, **_kwargs):
            raise TypeError("numpy path off")

        monkeypatch.setattr(numpy, "partition", unavailable)

    g = torch.Generator().manual_seed(n)
    values = torch.rand(n, 3, generator=g, dtype=torch.float64) ** 3
    values[::3, 1] = math.nan  # a column with gaps (samples a check did not run on)
    got = column_quantiles(values)
    q = torch.tensor(QUANTILES, dtype=torch.float64)
    for j in range(3):
        col = values[:, j][~torch.isnan(values[:, j])]
        if col.numel() == 0:
            assert all(math.isnan(v) for v in got[j][:3]) and got[j][3] == 0
            continue
        want = torch.quantile(col, q).tolist()
        assert list(got[j][:3]) == want  # exact, not approximately
        assert got[j][3] == col.numel()
