"""The report as data: derived figures follow from the fields, and the JSON form round-trips."""

from __future__ import annotations

import dataclasses
import json
import math

import torch

from eqaudit.engine.run import audit
from eqaudit.report import CheckResult, Report
from eqaudit.spec import spec_from_dict


def _report(**kwargs) -> Report:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(2, 1, 1))
    spec = spec_from_dict({"input": {"shape": [1, 6, 6], "sampling": "sobol"}, "samples": 128, "layers": ["1"],
                           "checks": [{"name": "r", "input": "rot90", "threshold": 0.05, "epsilon": 0.01,
                                       "weight": 2.0},
                                      {"name": "d4", "group": "D4", "output": "same"}]})
    return audit(model, spec, **kwargs)


def test_from_dict_round_trips_every_field() -> None:
    report = _report(precision=0.5)
    d = report.to_dict()
    assert d["sampling"] == "sobol" and d["target_halfwidth"] == 0.5 and d["noise_floor"] is not None
    again = Report.from_dict(d)
    assert again.to_dict() == d
    assert Report.from_json(report.to_json()).to_json() == report.to_json()
    assert again.noise_floor == report.noise_floor and again.sampling == "sobol" and again.target_halfwidth == 0.5
    assert again.checks[1].elements == report.checks[1].elements and again.checks[0].layers == report.checks[0].layers


def test_nan_figures_come_back_as_nan() -> None:
    report = _report(noise_floor=False)
    d = report.to_dict()
    assert d["noise_floor"] is None and d["checks"][0]["noise_floor"] is None
    again = Report.from_dict(d)
    assert math.isnan(again.noise_floor) and math.isnan(again.checks[0].noise_floor)
    assert again.to_dict() == d


def test_passed_and_penalty_follow_from_the_figures() -> None:
    check = _report().checks[0]
    assert check.penalty == 2.0 * max(0.0, check.mean - 0.01)
    assert check.passed == (check.mean <= 0.05)
    upper = dataclasses.replace(check, gate="upper", threshold=(check.mean + check.ci_high) / 2)
    assert upper.gated_value == upper.ci_high and not upper.passed  # the mean is below, the bound above
    assert dataclasses.replace(upper, gate="mean").passed
    assert not dataclasses.replace(check, error="failed", threshold=math.inf).passed
    fields = [f.name for f in dataclasses.fields(CheckResult)]
    assert "passed" not in fields and "penalty" not in fields  # derived, never stored
    keys = list(json.loads(_report().to_json())["checks"][0])
    assert keys[keys.index("weight") + 1: keys.index("weight") + 3] == ["penalty", "passed"]  # where they were
