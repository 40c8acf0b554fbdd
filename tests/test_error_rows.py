"""A check that cannot run is its own error row (table, JSON ``error``, JUnit ``<error>``, exit 2);
the other checks are still measured, with the numbers they have without it."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from eqaudit.engine.run import audit
from eqaudit.cli import app
from eqaudit.errors import EqauditError
from eqaudit.report import Report
from eqaudit.spec import spec_from_dict
from eqaudit.testing import render_table


class PairDistances(torch.nn.Module):
    """Pairwise distances of 3-d points: torch.cdist, which has no forward-mode AD."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mix = torch.nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.mix(x)
        return torch.cdist(p, p).reshape(x.shape[0], -1)


PERMUTE = {"name": "permute", "both": {"permute": {"dim": 0}}}
LIE = {"name": "lie", "input": {"rotate3d": {"axis": [0, 0, 1], "degrees": [-10, 10]}}, "mode": "lie"}


def _spec(checks, samples=200):
    return spec_from_dict({"input": {"shape": [5, 3]}, "samples": samples, "checks": checks})


def test_a_check_without_forward_ad_is_an_error_row_and_the_others_run() -> None:
    report = audit(PairDistances(), _spec([LIE, PERMUTE]))
    lie, permute = report.checks
    assert report.exit_code == 2 and not report.passed and report.errors == [lie]
    assert "checks[0].mode" in lie.error and "_cdist_forward" in lie.error and "torch.func.jvp" in lie.error
    assert lie.n == 0 and math.isnan(lie.mean) and not lie.passed
    alone = audit(PairDistances(), _spec([PERMUTE])).checks[0]
    assert permute.error is None and permute.n == 200 and permute.mean == alone.mean


def test_a_failing_transform_is_an_error_row_with_the_same_numbers_for_the_rest() -> None:
    broken = {"name": "broken", "input": "hflip", "output": "transpose"}  # transpose of (n, 25) outputs: fails
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(10, 25))
    spec = spec_from_dict({"input": {"shape": [2, 5]}, "samples": 300, "checks": [
        broken, {"name": "flip", "input": "hflip"}]})
    report = audit(model, spec)
    assert report.exit_code == 2 and report.checks[0].error is not None and "checks[0].output" in report.checks[0].error
    alone = audit(model, spec_from_dict({"input": {"shape": [2, 5]}, "samples": 300,
                                         "checks": [{"name": "flip", "input": "hflip"}]}))
    assert report.checks[1] == alone.checks[0]


def test_error_rows_in_json_junit_table_and_markdown() -> None:
    report = audit(PairDistances(), _spec([LIE, PERMUTE]))
    data = json.loads(report.to_json())
    assert data["checks"][0]["error"] == report.checks[0].error and data["checks"][0]["passed"] is False
    assert data["checks"][0]["mean"] is None and "error" not in data["checks"][1]
    suite = ET.fromstring(report.to_junit()).find("testsuite")
    assert suite.get("errors") == "1" and suite.get("failures") == str(int(not report.checks[1].passed))
    case = suite.findall("testcase")[0]
    assert case.find("error").get("message") == report.checks[0].error and case.find("failure") is None
    assert [line for line in render_table(report).splitlines() if "ERROR" in line][0].split()[1] == "lie"
    assert "⚠️ ERROR" in report.to_markdown() and report.to_markdown().startswith("### eqaudit: ERROR")
    assert Report.from_dict(data).to_dict() == report.to_dict()


def test_every_check_failing_still_reports_every_row() -> None:
    report = audit(PairDistances(), _spec([LIE, dict(LIE, name="lie2")]))
    assert [c.error is not None for c in report.checks] == [True, True] and report.exit_code == 2


def test_a_base_forward_failure_still_aborts_the_audit() -> None:
    with pytest.raises(EqauditError) as info:
        audit(torch.nn.Linear(4, 1), _spec([PERMUTE]))
    assert info.value.key == "input.shape"


def test_measure_exits_2_with_the_error_row_in_the_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pairs.py").write_text(
        "import torch\n\n"
        "class PairDistances(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.mix = torch.nn.Linear(3, 3)\n\n"
        "    def forward(self, x):\n"
        "        p = self.mix(x)\n"
        "        return torch.cdist(p, p).reshape(x.shape[0], -1)\n"
    )
    (tmp_path / "spec.yaml").write_text(
        "model: {factory: pairs.py:PairDistances}\n"
        "input: {shape: [5, 3]}\nsamples: 128\n"
        "checks:\n"
        "  - {name: lie, input: {rotate3d: {axis: [0, 0, 1], degrees: [-10, 10]}}, mode: lie}\n"
        "  - {name: permute, both: {permute: {dim: 0}}}\n"
    )
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["measure", "--spec", "spec.yaml", "--json", "out.json", "--quiet"])
    assert result.exit_code == 2, result.output
    checks = json.loads((tmp_path / "out.json").read_text())["checks"]
    assert "spec.yaml" in checks[0]["error"] and "checks[0].mode" in checks[0]["error"]
    assert checks[1]["n"] == 128 and "error" not in checks[1]
