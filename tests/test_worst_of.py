"""Worst-of-K checks against truth: the per-sample maximum over K draws equals an explicit loop
over the same streams, the grid's argmax equals a brute-force loop over the angles, it is the same
at any batch size, and bad ``worst_of`` values are exit 2 at the key."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import transforms_zoo
from eqaudit import audit
from eqaudit.cli import app
from eqaudit.engine.distances import relative_l2
from eqaudit.engine.evaluate import evaluate_checks
from eqaudit.engine.sampling import PointSampler
from eqaudit.spec import load_spec
from transforms_zoo import SampleRNG

from conftest import write_digits_spec

N = 128
ROTATE = "{rotate: {degrees: [-30, 30]}}"


def _spec_file(tmp_path: Path, checks: str) -> Path:
    """The bundled digits model and data with ``checks``."""
    return write_digits_spec(tmp_path / "worst.yaml", checks, distance="relative_l2", samples=N, seed=3)


def _points(path: Path) -> tuple[object, torch.nn.Module, torch.Tensor]:
    spec = load_spec(path)
    model = spec.build_model().eval()
    x = PointSampler(spec, torch.device("cpu"), torch.float32).draw(SampleRNG.for_range(spec.seed, 0, N))
    return spec, model, x


def test_worst_of_k_is_the_max_of_an_explicit_loop_over_the_same_streams(tmp_path: Path) -> None:
    k = 5
    path = _spec_file(tmp_path, f"  - name: plain\n    input: {ROTATE}\n"
                                f"  - name: worst\n    input: {ROTATE}\n    worst_of: {k}\n")
    spec, model, x = _points(path)
    rng = SampleRNG.for_range(spec.seed, 0, N)
    with torch.no_grad():
        y = model(x)
        evaluation = evaluate_checks(model, spec.checks, x, y, rng, spec, distance_dtype=torch.float64)
        plain, worst = (c.errors for c in evaluation.checks)
        rotate = spec.checks[1].input
        stream = rng.child("check:worst")
        by_hand = []
        for draw in range(k):  # the loop the engine must not run: one model call per draw
            params = rotate.sample(stream.child(f"worst_of:{draw}"))
            by_hand.append(relative_l2(y.double(), model(rotate.apply(x, params)).double()))
    table = torch.stack(by_hand, dim=1)
    assert torch.equal(worst, table.max(dim=1).values)
    assert torch.equal(evaluation.checks[1].worst.argmax, table.argmax(dim=1))
    report = audit(None, path, batch_size=64, noise_floor=False)
    assert report.checks[1].mean >= report.checks[0].mean
    assert report.checks[1].mean == pytest.approx(float(table.max(dim=1).values.mean()), abs=1e-12)
    drawn = report.checks[1].worst_of
    assert drawn["k"] == k and drawn["param"] is None and drawn["argmax_value"]["n"] == N
    assert -30 <= drawn["argmax_value"]["mean"] <= 30


def test_one_draw_is_one_draw_and_more_draws_never_lower_a_sample(tmp_path: Path) -> None:
    path = _spec_file(tmp_path, "".join(f"  - name: w{k}\n    input: {ROTATE}\n    worst_of: {k}\n"
                                        for k in (1, 2, 6)))
    spec, model, x = _points(path)
    rng = SampleRNG.for_range(spec.seed, 0, N)
    with torch.no_grad():
        ev = evaluate_checks(model, spec.checks, x, model(x), rng, spec, distance_dtype=torch.float64)
    e1, e2, e6 = (c.errors for c in ev.checks)
    assert bool((e1 >= 0).all()) and math.isfinite(float(e6.sum()))
    means = [float(e.mean()) for e in (e1, e2, e6)]
    assert means == sorted(means) and means[0] < means[2]


def test_the_grid_argmax_equals_a_brute_force_loop(tmp_path: Path) -> None:
    path = _spec_file(tmp_path, f"  - name: grid\n    input: {ROTATE}\n    worst_of: {{grid: {{degrees: [-30, 30, 13]}}}}\n"
                                "    threshold: 1\n")
    spec, model, x = _points(path)
    angles = [-30 + 5 * i for i in range(13)]
    with torch.no_grad():
        y = model(x)
        errors = torch.stack([relative_l2(y.double(), model(transforms_zoo.build({"rotate": {"degrees": a}}).apply(
            x, None)).double()) for a in angles], dim=1)
    best = errors.argmax(dim=1)
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["measure", "--spec", str(path), "--json", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    row = json.loads(out.read_text())["checks"][0]
    assert row["worst_of"]["param"] == "degrees"
    assert [h["value"] for h in row["worst_of"]["argmax"]] == angles
    assert [h["count"] for h in row["worst_of"]["argmax"]] == [int((best == i).sum()) for i in range(13)]
    assert row["mean"] == pytest.approx(float(errors.max(dim=1).values.mean()), abs=1e-12)
    assert row["max"] == float(errors.max())


def test_worst_of_is_the_same_at_any_batch_size(tmp_path: Path) -> None:
    path = _spec_file(tmp_path, f"  - name: worst\n    input: {ROTATE}\n    worst_of: 4\n"
                                f"  - name: grid\n    input: {{shift: {{dx: [-2, 2]}}}}\n"
                                "    worst_of: {grid: {dx: [-2, 2, 5]}}\n")
    reports = [audit(None, path, batch_size=b, noise_floor=False) for b in (64, 128)]
    rows = [[(c.error, c.mean, c.ci_high, c.max, c.worst_of) for c in r.checks] for r in reports]
    assert rows[0] == rows[1]
    assert all(c.error is None and c.n == N for c in reports[0].checks)
    assert sum(h["count"] for h in reports[0].checks[1].worst_of["argmax"]) == N


@pytest.mark.parametrize(("value", "key", "message"), [
    ("0", "checks[0].worst_of", "K must be an integer from 1 to 4096, got 0"),
    ("-3", "checks[0].worst_of", "K must be an integer from 1 to 4096"),
    ("{grid: {angle: [-30, 30, 61]}}", "checks[0].worst_of.grid.angle", "transform rotate has no parameter 'angle'"),
    ("{grid: {padding: [0, 1, 2]}}", "checks[0].worst_of.grid.padding", "parameter 'padding' of rotate is not numeric"),
    ("{grid: {degrees: [30, -30, 3]}}", "checks[0].worst_of.grid.degrees", "expected [lo, hi, count]"),
    ("{grid: {degrees: [-30, 30]}}", "checks[0].worst_of.grid.degrees", "expected [lo, hi, count]"),
    ("{grid: 3}", "checks[0].worst_of.grid", "a grid varies exactly one parameter"),
    ("[1]", "checks[0].worst_of", "expected an integer K >= 1"),
])
def test_bad_worst_of_is_exit_2_at_the_key(tmp_path: Path, value: str, key: str, message: str) -> None:
    path = _spec_file(tmp_path, f"  - input: {ROTATE}\n    worst_of: {value}\n")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert f": {key}: " in result.output and message in result.output


def test_worst_of_on_a_group_or_lie_check_is_exit_2(tmp_path: Path) -> None:
    path = _spec_file(tmp_path, "  - group: C4\n    worst_of: 3\n")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "checks[0].worst_of" in result.output, result.output


def test_per_layer_rows_skip_worst_of_checks(tmp_path: Path) -> None:
    """K draws would fold into one layer column (the last draw's errors): the layers skip them."""
    path = _spec_file(tmp_path, "  - name: plain\n    input: {shift: {dx: [-1, 1]}}\n"
                                "  - name: worst\n    input: {shift: {dx: [-1, 1]}}\n    worst_of: 3\n")
    text = path.read_text().replace("checks:", "layers: all\nchecks:")
    path.write_text(text)
    report = audit(None, path, batch_size=64, noise_floor=False)
    assert report.checks[0].layers and report.checks[1].layers is None
    assert any("worst_of): worst" in note for note in report.notes)


def test_the_unfused_order_gives_the_same_worst_case(tmp_path: Path) -> None:
    """The fine-tune penalty's order (each draw alone, fuse=False) takes the same draws."""
    path = _spec_file(tmp_path, f"  - name: worst\n    input: {ROTATE}\n    worst_of: 3\n"
                                "  - name: grid\n    input: {shift: {dx: [-2, 2]}}\n    worst_of: {grid: {dx: [-2, 2, 5]}}\n")
    spec, model, x = _points(path)
    rng = SampleRNG.for_range(spec.seed, 0, N)
    with torch.no_grad():
        y = model(x)
        fused = evaluate_checks(model, spec.checks, x, y, rng, spec, distance_dtype=torch.float64)
        alone = evaluate_checks(model, spec.checks, x, y, rng, spec, distance_dtype=torch.float64, fuse=False)
    for a, b in zip(fused.checks, alone.checks):
        assert torch.equal(a.errors, b.errors)
        assert torch.equal(a.worst.argmax, b.worst.argmax) and torch.equal(a.worst.value, b.worst.value)


def test_a_sweep_of_a_worst_of_check(tmp_path: Path) -> None:
    """worst_of: K follows the swept value (each point is the audit of the check at that value);
    a grid check is refused (its grid fixes the input transform, so the sweep would not reach it)."""
    from eqaudit.engine.sweep import sweep_spec
    from eqaudit.errors import ArgumentError

    path = _spec_file(tmp_path, f"  - name: worst\n    input: {ROTATE}\n    worst_of: 3\n"
                                f"  - name: grid\n    input: {ROTATE}\n    worst_of: {{grid: {{degrees: [-9, 9, 3]}}}}\n"
                                "  - name: at20\n    input: {rotate: {degrees: [-20, 20]}}\n    worst_of: 3\n")
    spec = load_spec(path)
    swept, _ = sweep_spec(spec, "worst", "degrees", [[-20, 20]])
    at20 = spec.replace(checks=(dataclasses.replace(spec.checks[2], stream="worst"),))  # the swept check's draws
    got = audit(None, swept, batch_size=64, noise_floor=False).checks[0].mean
    assert got == audit(None, at20, batch_size=64, noise_floor=False).checks[0].mean
    with pytest.raises(ArgumentError, match="worst over a grid of degrees"):
        sweep_spec(spec, "grid", "degrees", [5])


def test_an_unnamed_worst_of_check_is_not_named_like_the_plain_check(tmp_path: Path) -> None:
    path = _spec_file(tmp_path, f"  - input: {ROTATE}\n  - input: {ROTATE}\n    worst_of: 4\n"
                                f"  - input: {ROTATE}\n    worst_of: {{grid: {{degrees: [-9, 9, 3]}}}}\n")
    names = [c.name for c in load_spec(path).checks]
    assert names == ["rotate(degrees=[-30, 30])", "rotate(degrees=[-30, 30]) (worst of 4)",
                     "rotate(degrees=[-30, 30]) (worst of grid)"]
