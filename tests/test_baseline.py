"""``eqaudit measure --baseline REPORT [--fail-on-regression TOL] [--save-samples]``: the run
against an earlier report of the same spec, paired when both carry per-sample errors of the same
points and Welch otherwise (the report says which), exit 1 on a regression, exit 2 for a baseline
of another spec or a file that is not a report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import NormalDist

import pytest
import yaml
from typer.testing import CliRunner

from eqaudit.cli import app

from conftest import SPEC, make_project

BASELINE_FIELDS = {"file", "checkpoint", "seed", "samples", "tolerance", "gated", "regressed", "checks"}
DIFFERENCE_FIELDS = {"check", "old", "new", "change", "ci_low", "ci_high", "confidence", "interval", "n", "allowed",
                     "regressed", "relative"}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny project, with a baseline report of ``a`` with its per-sample errors (``base.json``)
    and one without (``plain.json``)."""
    paths = make_project(tmp_path_factory.mktemp("baseline"))
    folder = paths["spec"].parent
    paths["base"], paths["plain"] = folder / "base.json", folder / "plain.json"
    assert invoke("measure", str(paths["a"]), "--spec", str(paths["spec"]), "--json", str(paths["base"]),
                  "--save-samples", "-q").exit_code == 0
    assert invoke("measure", str(paths["a"]), "--spec", str(paths["spec"]), "--json",
                  str(paths["plain"]), "-q").exit_code == 0
    return paths


def invoke(*args: str) -> object:
    return CliRunner().invoke(app, [*args, "--device", "cpu"])


def measure(project: dict[str, Path], checkpoint: str, *args: str) -> object:
    return invoke("measure", str(project[checkpoint]), "--spec", str(project["spec"]), *args)


def test_saved_samples_are_the_reports_errors(project: dict[str, Path]) -> None:
    d = json.loads(project["base"].read_text(encoding="utf-8"))
    saved = d["samples_errors"]
    assert (saved["seed"], saved["samples"]) == (d["seed"], d["samples"]) and len(saved["points"]) == 16
    for c in d["checks"]:
        values = saved["checks"][c["name"]]
        assert len(values) == 256 and math.fsum(values) / 256 == pytest.approx(c["mean"], rel=1e-12, abs=0)
    plain = json.loads(project["plain"].read_text(encoding="utf-8"))
    assert "samples_errors" not in plain and "baseline" not in plain  # the plain report is unchanged
    assert plain["checks"] == d["checks"]


def test_the_same_checkpoint_against_its_saved_baseline_is_an_exact_zero(project: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = measure(project, "same", "--baseline", str(project["base"]), "--json", str(out))
    assert result.exit_code == 0, result.output
    section = json.loads(out.read_text(encoding="utf-8"))["baseline"]
    assert set(section) == BASELINE_FIELDS
    assert section["file"] == str(project["base"]) and section["checkpoint"] == str(project["a"])
    assert section["gated"] is True and section["regressed"] is False and section["tolerance"] == 0.0
    for d in section["checks"]:
        assert set(d) == DIFFERENCE_FIELDS
        assert (d["interval"], d["change"], d["ci_low"], d["ci_high"], d["n"]) == ("paired", 0.0, 0.0, 0.0, 256)


def test_a_regression_against_the_baseline_is_exit_1(project: dict[str, Path], tmp_path: Path) -> None:
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    result = measure(project, "perturbed", "--baseline", str(project["base"]), "--json", str(out),
                     "--markdown", str(md))
    assert result.exit_code == 1, result.output
    assert "REGRESSED" in result.output
    section = json.loads(out.read_text(encoding="utf-8"))["baseline"]
    assert section["regressed"] is True
    assert all(d["regressed"] and d["interval"] == "paired" and d["ci_low"] > 0 for d in section["checks"])
    text = md.read_text(encoding="utf-8")
    assert text.startswith("### eqaudit: PASSED")  # the thresholds pass: the regression is its own verdict
    assert "### eqaudit compare: REGRESSED" in text and "❌ regressed" in text and "paired)" in text
    assert f"| {project['base']} (reference) | {project['perturbed']} | change [CI] |" in text


@pytest.mark.parametrize(("tolerance", "code", "gated"), [("off", 0, False), ("50%", 0, True), ("0.5", 0, True),
                                                          ("1%", 1, True), ("0", 1, True)])
def test_the_allowed_relative_change(project: dict[str, Path], tmp_path: Path, tolerance: str, code: int,
                                     gated: bool) -> None:
    """The perturbed checkpoint raises rot by about 2% and flip by about 10%."""
    out = tmp_path / "r.json"
    result = measure(project, "perturbed", "--baseline", str(project["base"]), "--fail-on-regression", tolerance,
                     "--json", str(out), "-q")
    assert result.exit_code == code, result.output
    section = json.loads(out.read_text(encoding="utf-8"))["baseline"]
    assert section["gated"] is gated
    for d in section["checks"]:
        assert d["allowed"] == pytest.approx(section["tolerance"] * d["old"])
        assert d["regressed"] == (d["ci_low"] > d["allowed"])


def test_a_baseline_without_samples_gives_welch_and_says_so(project: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = measure(project, "perturbed", "--baseline", str(project["plain"]), "--json", str(out))
    assert "Welch intervals, not paired" in result.output and "carries no per-sample errors" in result.output
    section = json.loads(out.read_text(encoding="utf-8"))["baseline"]
    base = {c["name"]: c for c in json.loads(project["plain"].read_text(encoding="utf-8"))["checks"]}
    new = {c["name"]: c for c in json.loads(out.read_text(encoding="utf-8"))["checks"]}
    z = NormalDist().inv_cdf(0.975)
    for d in section["checks"]:
        a, b = base[d["check"]], new[d["check"]]
        half = z * math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])
        assert d["interval"] == "welch"
        assert (d["ci_low"], d["ci_high"]) == pytest.approx((d["change"] - half, d["change"] + half), rel=1e-12)


def test_a_baseline_of_another_seed_is_not_paired(project: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = measure(project, "same", "--baseline", str(project["base"]), "--seed", "7", "--save-samples",
                     "--json", str(out))
    assert "not paired: seed 0 vs 7" in result.output
    d = json.loads(out.read_text(encoding="utf-8"))
    assert {c["interval"] for c in d["baseline"]["checks"]} == {"welch"} and d["samples_errors"]["seed"] == 7


def test_a_baseline_of_another_spec_is_exit_2_naming_the_file(project: dict[str, Path], tmp_path: Path) -> None:
    spec = {**SPEC, "checks": [{**SPEC["checks"][0], "distance": "relative_l2"}, SPEC["checks"][1],
                               {"name": "shift", "input": {"shift": {"dx": 1}}}]}
    other = project["spec"].parent / "other.yaml"
    other.write_text(yaml.safe_dump(spec), encoding="utf-8")
    out = tmp_path / "r.json"
    result = invoke("measure", str(project["a"]), "--spec", str(other), "--baseline", str(project["base"]),
                    "--json", str(out))
    assert result.exit_code == 2
    line = result.output.replace("\n", "")
    assert str(project["base"]) in line and "not a report of the same spec" in line
    assert "check 'rot': distance 'l2' vs 'relative_l2'" in line and "checks only in this report: shift" in line


@pytest.mark.parametrize(("content", "message"), [(None, "report file not found"), ("[]", "not an eqaudit JSON report"),
                                                  ('{"tool": "eqaudit", "checks": 3}', "malformed")])
def test_a_bad_baseline_is_exit_2_before_the_run(project: dict[str, Path], tmp_path: Path, content: str | None,
                                                 message: str) -> None:
    bad, out = tmp_path / "bad.json", tmp_path / "r.json"
    if content is not None:
        bad.write_text(content, encoding="utf-8")
    result = measure(project, "a", "--baseline", str(bad), "--json", str(out))
    assert result.exit_code == 2 and message in result.output and "bad.json" in result.output
    assert not out.exists()


def test_a_bad_tolerance_is_exit_2(project: dict[str, Path]) -> None:
    result = measure(project, "a", "--baseline", str(project["base"]), "--fail-on-regression", "lots")
    assert result.exit_code == 2 and "--fail-on-regression" in result.output


def test_the_json_output_may_not_replace_the_baseline(project: dict[str, Path]) -> None:
    result = measure(project, "a", "--baseline", str(project["plain"]), "--json", str(project["plain"]))
    assert result.exit_code == 2 and "--baseline" in result.output


def test_a_multi_checkpoint_report_is_no_baseline(project: dict[str, Path], tmp_path: Path) -> None:
    many = tmp_path / "many.json"
    assert invoke("measure", str(project["a"]), str(project["same"]), "--spec", str(project["spec"]), "--json",
                  str(many), "-q").exit_code == 0
    result = measure(project, "a", "--baseline", str(many))
    assert result.exit_code == 2 and "single-checkpoint report" in result.output


def documented(text: str, field: str) -> bool:
    """``field`` as code (`` `field` ``) or inside a documented object (``{a, field, b}``)."""
    import re

    return re.search("`" + re.escape(field) + r"[`\s,]", text) is not None or re.search(
        rf"[{{,]\s*{re.escape(field)}\s*[,}}]", text) is not None


def test_every_comparison_field_is_documented(project: dict[str, Path], tmp_path: Path) -> None:
    """The baseline section, the per-sample errors, the multi-checkpoint report and the comparison:
    each field written is in reports.md's 'Baselines and comparisons'."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "reports.md").read_text(encoding="utf-8")
    text = text[text.index("## Baselines and comparisons"):]
    text = text[: text.index("\n## ", 5)]
    out, many = tmp_path / "r.json", tmp_path / "many.json"
    assert measure(project, "perturbed", "--baseline", str(project["base"]), "--json", str(out), "-q",
                   "--save-samples").exit_code == 1
    assert invoke("measure", str(project["a"]), str(project["same"]), "--spec", str(project["spec"]), "--json",
                  str(many), "-q").exit_code == 0
    r, m = json.loads(out.read_text(encoding="utf-8")), json.loads(many.read_text(encoding="utf-8"))
    fields = [*r["baseline"], *r["baseline"]["checks"][0], *r["samples_errors"], *m, *m["comparison"],
              *m["comparison"]["against"][0]]
    for field in fields:
        assert documented(text, field), f"{field!r} missing from reports.md 'Baselines and comparisons'"
