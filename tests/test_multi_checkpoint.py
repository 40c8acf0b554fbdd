"""Several checkpoints in one run (``eqaudit measure A B ... --spec``): every checkpoint audited on
the same points, one table and one JSON report, paired differences against the first; a planted
regression (one layer perturbed) caught, an unchanged checkpoint never flagged across 20 seeds;
exit code the worst over the checkpoints."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from eqaudit.engine.run import audit
from eqaudit.cli import app
from eqaudit.cli.measure_many import measure_checkpoints
from eqaudit.report.compare import compare_reports

from conftest import SPEC, make_project


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_project(tmp_path_factory.mktemp("multi"))


def invoke(*args: str) -> object:
    return CliRunner().invoke(app, [*args, "--device", "cpu"])


def test_a_planted_regression_is_caught_and_an_unchanged_checkpoint_never_flagged(project: dict[str, Path]) -> None:
    """20 seeds: the perturbed checkpoint regresses on every seed (paired interval), the copy of the
    reference on none; the Welch interval of the same runs is many times wider."""
    from eqaudit.spec import load_spec

    spec = load_spec(project["spec"]).replace(samples=128)
    caught, false_alarms, width_ratio = 0, 0, []
    for seed in range(20):
        def run(path: Path, keep: bool, seed: int = seed) -> object:
            return audit(None, spec, checkpoint=path, seed=seed, device="cpu", noise_floor=False, keep_samples=keep)

        reports, _, cmp = measure_checkpoints([project["a"], project["perturbed"], project["same"]], run,
                                              tolerance="0")
        perturbed, same = cmp.differences
        caught += all(d.regressed and d.interval == "paired" for d in perturbed)
        false_alarms += any(d.regressed for d in same)
        assert all(d.change == 0.0 and d.interval == "paired" for d in same)
        welch = compare_reports(reports[:2], ["a", "perturbed"]).differences[0]
        width_ratio += [(w.ci_high - w.ci_low) / (p.ci_high - p.ci_low) for w, p in zip(welch, perturbed)]
    assert caught == 20, f"planted regression caught on {caught}/20 seeds"
    assert false_alarms == 0, f"unchanged checkpoint flagged on {false_alarms}/20 seeds"
    assert min(width_ratio) > 5, f"Welch/paired width ratios {min(width_ratio):.1f}..{max(width_ratio):.1f}"


def test_welch_false_alarm_rate_of_an_unchanged_model_on_independent_seeds(project: dict[str, Path]) -> None:
    """The same model audited on independent points (seed s against seed s + 1000): a 95% interval
    flags a one-sided 'significant increase' about 2.5% of the time; measured over 20 seed pairs
    and two checks (40 comparisons), it must stay far below the planted regression's 100%."""
    from eqaudit.spec import load_spec

    spec = load_spec(project["spec"]).replace(samples=128)
    flagged = 0
    for seed in range(20):
        old = audit(None, spec, checkpoint=project["a"], seed=seed, device="cpu", noise_floor=False)
        new = audit(None, spec, checkpoint=project["a"], seed=seed + 1000, device="cpu", noise_floor=False)
        flagged += sum(d.regressed for d in compare_reports([old, new], ["old", "new"]).differences[0])
    assert flagged <= 4, f"{flagged}/40 false alarms (expected about 1)"


def test_per_sample_errors_are_the_audits_errors(tmp_path: Path) -> None:
    """The kept per-sample errors are exactly those the audit folded in: their mean is the report's
    mean, for a plain check, a group check, and checks drawn by num_funcs."""
    from eqaudit.spec import load_spec

    spec_dict = {**SPEC, "num_funcs": 2, "checks": [*SPEC["checks"], {"name": "c4", "group": "C4"},
                                                     {"name": "shift", "input": {"shift": {"dx": 1}}}]}
    paths = make_project(tmp_path, spec_dict)
    spec = load_spec(paths["spec"])
    report = audit(None, spec, checkpoint=paths["a"], device="cpu", noise_floor=False, batch_size=64,
                   keep_samples=True)
    kept = report.sample_errors
    for c in report.checks:
        values = [v for v in kept.checks[c.name] if not math.isnan(v)]
        assert len(values) == c.n < 256  # num_funcs: each check on about half the samples
        assert math.fsum(values) / len(values) == pytest.approx(c.mean, rel=1e-12, abs=0)


def test_cli_several_checkpoints_one_table_one_report(project: dict[str, Path], tmp_path: Path) -> None:
    out, single = tmp_path / "many.json", tmp_path / "single.json"
    md = tmp_path / "many.md"
    result = invoke("measure", str(project["a"]), str(project["perturbed"]), str(project["same"]),
                    "--spec", str(project["spec"]), "--json", str(out), "--markdown", str(md))
    assert result.exit_code == 0, result.output  # thresholds pass; regressions shown, not gated
    assert "REGRESSED" in result.output and "paired" in result.output
    d = json.loads(out.read_text(encoding="utf-8"))
    assert set(d) == {"tool", "version", "spec", "seed", "samples", "passed", "exit_code", "checkpoints", "comparison"}
    assert [s["checkpoint"] for s in d["checkpoints"]] == [str(project[k]) for k in ("a", "perturbed", "same")]
    assert invoke("measure", str(project["a"]), "--spec", str(project["spec"]), "--json", str(single), "-q").exit_code == 0
    alone = json.loads(single.read_text(encoding="utf-8"))
    assert set(d["checkpoints"][0]) == set(alone)  # each section is the single-checkpoint report
    assert d["checkpoints"][0]["checks"] == alone["checks"]  # the same points: the same numbers
    against = d["comparison"]["against"]
    assert [a["label"] for a in against] == [str(project["perturbed"]), str(project["same"])]
    assert all(c["interval"] == "paired" and c["regressed"] for c in against[0]["checks"])
    assert all(c["change"] == 0 and not c["regressed"] for c in against[1]["checks"])
    assert "samples_errors" not in d["checkpoints"][0]
    text = md.read_text(encoding="utf-8")
    assert "### eqaudit compare: REGRESSED" in text and "(paired)" not in text and "paired)" in text


def test_exit_code_is_the_worst_over_checkpoints(project: dict[str, Path], tmp_path: Path) -> None:
    spec = dict(SPEC)
    folder = tmp_path / "p"
    folder.mkdir()
    paths = make_project(folder, spec)
    first = invoke("measure", str(paths["a"]), "--spec", str(paths["spec"]), "--json", "-")
    means = {c["name"]: c["mean"] for c in json.loads(first.stdout)["checks"]}
    # thresholds between a's and the perturbed checkpoint's means: a passes, perturbed fails
    spec["checks"] = [{**c, "threshold": means[c["name"]] * 1.005} for c in SPEC["checks"]]
    paths["spec"].write_text(yaml.safe_dump(spec), encoding="utf-8")
    assert invoke("measure", str(paths["a"]), "--spec", str(paths["spec"]), "-q").exit_code == 0
    result = invoke("measure", str(paths["a"]), str(paths["perturbed"]), "--spec", str(paths["spec"]))
    assert result.exit_code == 1, result.output
    assert re.search(r"FAILED \(.*perturbed.safetensors\): rot, flip", result.output.replace("\n", ""))
    result = invoke("measure", str(paths["perturbed"]), str(paths["a"]), "--spec", str(paths["spec"]), "-q")
    assert result.exit_code == 1  # whichever comes first


def test_regressions_fail_several_checkpoints_only_when_asked(project: dict[str, Path]) -> None:
    args = ["measure", str(project["a"]), str(project["perturbed"]), "--spec", str(project["spec"]), "-q"]
    assert invoke(*args).exit_code == 0
    assert invoke(*args, "--fail-on-regression", "0").exit_code == 1
    assert invoke(*args, "--fail-on-regression", "50%").exit_code == 0  # +2% and +10% are allowed


def test_saved_samples_let_compare_pair_the_sections(project: dict[str, Path], tmp_path: Path) -> None:
    out, cmp = tmp_path / "many.json", tmp_path / "cmp.json"
    result = invoke("measure", str(project["a"]), str(project["perturbed"]), "--spec", str(project["spec"]),
                    "--json", str(out), "--save-samples", "-q")
    assert result.exit_code == 0, result.output
    d = json.loads(out.read_text(encoding="utf-8"))
    assert set(d["checkpoints"][0]["samples_errors"]) == {"seed", "samples", "points", "checks"}
    assert len(d["checkpoints"][1]["samples_errors"]["checks"]["rot"]) == 256
    result = CliRunner().invoke(app, ["compare", str(out), "--json", str(cmp), "-q"])
    assert result.exit_code == 0, result.output
    again = json.loads(cmp.read_text(encoding="utf-8"))["against"][0]["checks"]
    assert again == d["comparison"]["against"][0]["checks"]  # paired again, the same numbers


def test_baseline_takes_one_checkpoint(project: dict[str, Path], tmp_path: Path) -> None:
    base = tmp_path / "base.json"
    assert invoke("measure", str(project["a"]), "--spec", str(project["spec"]), "--json", str(base), "-q").exit_code == 0
    result = invoke("measure", str(project["a"]), str(project["same"]), "--spec", str(project["spec"]),
                    "--baseline", str(base))
    assert result.exit_code == 2 and "--baseline" in result.output


def test_a_missing_second_checkpoint_is_exit_2_before_any_run(project: dict[str, Path], tmp_path: Path) -> None:
    result = invoke("measure", str(project["a"]), str(tmp_path / "nope.safetensors"), "--spec", str(project["spec"]))
    assert result.exit_code == 2 and "nope.safetensors" in result.output and "not found" in result.output


def test_a_check_that_cannot_run_is_an_error_in_every_section_and_not_compared(tmp_path: Path) -> None:
    """Exit 2; the other checks are still compared (paired), the broken one's change is n/a."""
    spec = {**SPEC, "checks": [SPEC["checks"][0], {"name": "broken", "input": "tiny_model.py:two_channels"}]}
    paths = make_project(tmp_path, spec)
    out, md = tmp_path / "many.json", tmp_path / "many.md"
    result = invoke("measure", str(paths["a"]), str(paths["perturbed"]), "--spec", str(paths["spec"]),
                    "--json", str(out), "--markdown", str(md), "-q")
    assert result.exit_code == 2
    assert f"{paths['perturbed']}: " in result.output and "checks[1].input" in result.output
    d = json.loads(out.read_text(encoding="utf-8"))
    rot, broken = d["comparison"]["against"][0]["checks"]
    assert rot["interval"] == "paired" and rot["regressed"] and rot["n"] == 256
    assert broken["change"] is None and broken["n"] == 0 and not broken["regressed"]
    assert all("error" in s["checks"][1] for s in d["checkpoints"]) and d["exit_code"] == 2
    assert "| broken | nan | nan | nan [nan, nan] (paired) | ⚠️ n/a |" in md.read_text(encoding="utf-8")
