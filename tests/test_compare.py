"""Comparison of reports (eqaudit.report.compare and ``eqaudit compare``): the Welch and paired
intervals against hand computations, the regression rule, reports of different specs refused,
and the JSON and Markdown outputs carrying their fields."""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import NormalDist

import pytest
from typer.testing import CliRunner

from eqaudit.cli import app
from eqaudit.errors import EqauditError
from eqaudit.report import CheckResult, Report
from eqaudit.report.compare import (
    SampleErrors, compare_reports, difference, paired_interval, parse_tolerance, read_reports, spec_differences,
    welch_interval,
)

Z95 = NormalDist().inv_cdf(0.975)  # the quantile every eqaudit interval uses


def check(name: str = "rot", mean: float = 1.0, std: float = 0.5, n: int = 100, **kw) -> CheckResult:
    fields = dict(name=name, input="rot90", output="rot90", distance="l2", n=n, mean=mean, std=std,
                  stderr=std / math.sqrt(n), ci_low=mean - Z95 * std / math.sqrt(n),
                  ci_high=mean + Z95 * std / math.sqrt(n), confidence=0.95, epsilon=0.0, threshold=10.0, weight=1.0)
    fields.update(kw)
    return CheckResult(**fields)


def report(*checks: CheckResult, seed: int = 0) -> Report:
    return Report(checks=tuple(checks), spec="spec.yaml", checkpoint=None, device="cpu", seed=seed,
                  samples=checks[0].n, elapsed_s=0.1)


def test_welch_interval_is_the_hand_computation() -> None:
    old, new = check(mean=1.0, std=0.5, n=100), check(mean=1.2, std=0.8, n=400)
    change, low, high = welch_interval(old, new, 0.95)
    se = math.sqrt(0.5 ** 2 / 100 + 0.8 ** 2 / 400)  # Welch's unpooled standard error
    assert change == pytest.approx(0.2, abs=1e-15)
    assert low == pytest.approx(0.2 - 1.959963984540054 * se, rel=1e-12)
    assert high == pytest.approx(0.2 + 1.959963984540054 * se, rel=1e-12)
    _, low90, high90 = welch_interval(old, new, 0.90)
    assert high90 - low90 == pytest.approx(2 * 1.6448536269514722 * se, rel=1e-12)


def test_paired_interval_is_the_hand_computation() -> None:
    old = [1.0, 2.0, 3.0, 4.0, 5.0, math.nan]
    new = [1.5, 2.25, 3.5, 4.0, 6.0, 7.0]  # the last pair has a NaN side: left out
    n, change, low, high = paired_interval(old, new, 0.95)
    d = [0.5, 0.25, 0.5, 0.0, 1.0]
    mean = sum(d) / 5
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / 4)
    assert n == 5 and change == pytest.approx(mean, abs=1e-15)
    assert (low, high) == pytest.approx((mean - 1.959963984540054 * sd / math.sqrt(5),
                                         mean + 1.959963984540054 * sd / math.sqrt(5)), rel=1e-12)


def test_paired_interval_of_identical_errors_is_zero_wide() -> None:
    values = [0.1 * i for i in range(50)]
    assert paired_interval(values, list(values), 0.95) == (50, 0.0, 0.0, 0.0)


def test_paired_interval_refuses_unequal_lengths() -> None:
    with pytest.raises(ValueError, match="cannot be paired"):
        paired_interval([1.0, 2.0], [1.0], 0.95)


def test_regression_is_the_lower_bound_above_the_allowed_change() -> None:
    old = check(mean=1.0, std=0.1, n=10_000)
    new = check(mean=1.05, std=0.1, n=10_000)  # +5%, interval about +-0.0028
    assert difference(old, new, 0.0, 0.95).regressed  # any significant increase
    assert difference(old, new, 0.04, 0.95).regressed  # low ~0.047 > 0.04
    assert not difference(old, new, 0.05, 0.95).regressed  # low < 0.05 * 1.0
    noisy = check(mean=1.05, std=10.0, n=100)  # the same increase, not significant
    assert not difference(old, noisy, 0.0, 0.95).regressed
    better = difference(new, old, 0.0, 0.95)
    assert better.change < 0 and not better.regressed


def test_a_check_of_one_sample_has_an_unbounded_interval_and_never_regresses() -> None:
    d = difference(check(n=1, std=math.nan), check(mean=5.0, n=1, std=math.nan), 0.0, 0.95)
    assert (d.ci_low, d.ci_high, d.regressed) == (-math.inf, math.inf, False)
    assert d.to_dict()["ci_low"] is None  # JSON has no infinity


@pytest.mark.parametrize(("text", "value"), [("10%", 0.1), ("0.1", 0.1), ("0", 0.0), ("2.5 %", 0.025),
                                             ("off", None), ("OFF", None), (None, None), ("1e-2", 0.01)])
def test_tolerance_spellings(text: str | None, value: float | None) -> None:
    assert parse_tolerance(text, "--fail-on-regression") == (pytest.approx(value) if value is not None else None)


@pytest.mark.parametrize("text", ["-5%", "ten", "10%%", "", "nan"])
def test_bad_tolerance_is_an_error_naming_the_option(text: str) -> None:
    with pytest.raises(EqauditError) as info:
        parse_tolerance(text, "--fail-on-regression")
    assert info.value.key == "--fail-on-regression"


def test_spec_differences_name_checks_and_fields() -> None:
    ref = report(check("rot"), check("flip"))
    assert spec_differences(ref, report(check("flip"), check("rot"))) == []  # order does not matter
    found = spec_differences(ref, report(check("rot", distance="relative_l2"), check("shift")))
    assert found == ["checks only in the reference: flip", "checks only in this report: shift",
                     "check 'rot': distance 'l2' vs 'relative_l2'"]
    assert spec_differences(ref, report(check("rot", input="rot90(k=2)"), check("flip"))) == [
        "check 'rot': input 'rot90' vs 'rot90(k=2)'"]


def test_compare_reports_pairs_only_matching_samples() -> None:
    a, b = report(check(mean=1.0, n=4)), report(check(mean=1.5, n=4))
    sa = SampleErrors(0, 4, "p", {"rot": [1.0, 1.0, 1.0, 1.0]})
    sb = SampleErrors(0, 4, "p", {"rot": [1.5, 1.4, 1.6, 1.5]})
    paired = compare_reports([a, b], ["a", "b"], samples=[sa, sb])
    assert paired.differences[0][0].interval == "paired" and paired.notes == ()
    other_points = SampleErrors(0, 4, "q", sb.checks)
    welch = compare_reports([a, b], ["a", "b"], samples=[sa, other_points])
    assert welch.differences[0][0].interval == "welch"
    assert welch.notes == ("b against a: Welch intervals, not paired: points p vs q",)
    missing = compare_reports([a, b], ["a", "b"], samples=[sa, None])
    assert "b carries no per-sample errors" in missing.notes[0]


def test_sample_errors_round_trip_through_json() -> None:
    s = SampleErrors(3, 3, "abc", {"rot": [0.1, math.nan, 1 / 3]})
    back = SampleErrors.from_dict(json.loads(json.dumps(s.to_dict(), allow_nan=False)), "r.json")
    assert back.checks["rot"][0] == 0.1 and math.isnan(back.checks["rot"][1]) and back.checks["rot"][2] == 1 / 3
    with pytest.raises(EqauditError, match="samples_errors") as info:
        SampleErrors.from_dict({"seed": 0}, "r.json")
    assert info.value.file == "r.json"


# -- eqaudit compare ----------------------------------------------------------------------------
def write(path: Path, r: Report) -> Path:
    path.write_text(r.to_json(), encoding="utf-8")
    return path


def test_compare_refuses_reports_of_different_specs(tmp_path: Path) -> None:
    a = write(tmp_path / "a.json", report(check("rot"), check("flip")))
    b = write(tmp_path / "b.json", report(check("rot", output="identity"), check("flip")))
    result = CliRunner().invoke(app, ["compare", str(a), str(b)])
    assert result.exit_code == 2
    assert "b.json is not a report of the same spec as" in result.output and "a.json" in result.output
    assert "check 'rot': output 'rot90' vs 'identity'" in result.output
    c = write(tmp_path / "c.json", report(check("rot")))
    result = CliRunner().invoke(app, ["compare", str(a), str(a), str(c)])
    assert result.exit_code == 2 and "checks only in the reference: flip" in result.output


@pytest.mark.parametrize(("content", "message"), [(None, "report file not found"), ("{", "cannot read"),
                                                  ('{"a": 1}', "not an eqaudit JSON report"),
                                                  ('{"tool": "eqaudit"}', "malformed eqaudit report")])
def test_compare_refuses_what_is_not_a_report(tmp_path: Path, content: str | None, message: str) -> None:
    good = write(tmp_path / "good.json", report(check()))
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content, encoding="utf-8")
    result = CliRunner().invoke(app, ["compare", str(good), str(bad)])
    assert result.exit_code == 2 and message in result.output and "bad.json" in result.output


def test_compare_needs_two_reports(tmp_path: Path) -> None:
    a = write(tmp_path / "a.json", report(check()))
    result = CliRunner().invoke(app, ["compare", str(a)])
    assert result.exit_code == 2 and "at least two reports" in result.output


def test_compare_writes_json_and_markdown_and_gates_when_asked(tmp_path: Path) -> None:
    a = write(tmp_path / "a.json", report(check("rot", mean=1.0, std=0.1, n=10_000), check("flip", mean=0.5)))
    b = write(tmp_path / "b.json", report(check("rot", mean=1.2, std=0.1, n=10_000), check("flip", mean=0.5)))
    out, md = tmp_path / "cmp.json", tmp_path / "cmp.md"
    result = CliRunner().invoke(app, ["compare", str(a), str(b), "--json", str(out), "--markdown", str(md), "-q"])
    assert result.exit_code == 0, result.output  # shown, not gated without --fail-on-regression
    d = json.loads(out.read_text(encoding="utf-8"))
    assert set(d) == {"reference", "tolerance", "gated", "regressed", "notes", "against"}
    assert d["reference"] == str(a) and d["regressed"] is True and d["gated"] is False
    rot = d["against"][0]["checks"][0]
    assert set(rot) == {"check", "old", "new", "change", "ci_low", "ci_high", "confidence", "interval", "n",
                        "allowed", "regressed", "relative"}
    se = math.sqrt(2 * 0.1 ** 2 / 10_000)
    assert rot["interval"] == "welch" and rot["ci_low"] == pytest.approx(0.2 - Z95 * se, rel=1e-9)
    assert rot["relative"] == pytest.approx(0.2)
    text = md.read_text(encoding="utf-8")
    assert "### eqaudit compare: REGRESSED" in text
    assert "| rot | 1 | 1.2 | +0.2 [0.1972, 0.2028] (+20%, welch) | ❌ regressed |" in text
    assert "| flip | 0.5 | 0.5 | 0 [" in text and "➖ same" in text
    assert CliRunner().invoke(app, ["compare", str(a), str(b), "--fail-on-regression", "10%", "-q"]).exit_code == 1
    assert CliRunner().invoke(app, ["compare", str(a), str(b), "--fail-on-regression", "25%", "-q"]).exit_code == 0
    assert CliRunner().invoke(app, ["compare", str(b), str(a), "--fail-on-regression", "0", "-q"]).exit_code == 0


def test_compare_json_on_stdout(tmp_path: Path) -> None:
    a = write(tmp_path / "a.json", report(check()))
    result = CliRunner().invoke(app, ["compare", str(a), str(a), "--json", "-"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["against"][0]["checks"][0]["change"] == 0.0


def test_read_reports_expands_a_multi_checkpoint_report(tmp_path: Path) -> None:
    sections = [report(check(mean=1.0)).to_dict(), report(check(mean=2.0)).to_dict()]
    sections[0]["checkpoint"], sections[1]["checkpoint"] = "a.pt", "b.pt"
    path = tmp_path / "many.json"
    path.write_text(json.dumps({"tool": "eqaudit", "checkpoints": sections}), encoding="utf-8")
    found = read_reports(str(path), "REPORTS")
    assert [r.label for r in found] == [f"{path}[a.pt]", f"{path}[b.pt]"]
    assert [r.report.checks[0].mean for r in found] == [1.0, 2.0]


def test_a_refusal_names_the_argument_of_the_file(tmp_path: Path) -> None:
    """A multi-checkpoint file counts as several reports; the refusal still names its argument."""
    sections = [report(check("rot")).to_dict(), report(check("rot")).to_dict()]
    many = tmp_path / "many.json"
    many.write_text(json.dumps({"tool": "eqaudit", "checkpoints": sections}), encoding="utf-8")
    other = write(tmp_path / "other.json", report(check("flip")))
    result = CliRunner().invoke(app, ["compare", str(many), str(other)])
    assert result.exit_code == 2 and "REPORTS 2:" in result.output, result.output
