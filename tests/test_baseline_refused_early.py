"""A ``--baseline`` that holds several checkpoints' reports is refused before the audit runs
(exit 2 naming the file), not after a run whose result could never be compared."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import eqaudit.engine.run
from eqaudit.cli import app
from conftest import make_project


def test_a_multi_checkpoint_baseline_is_refused_before_the_run(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    paths = make_project(tmp_path)
    many = tmp_path / "many.json"
    runner = CliRunner()
    made = runner.invoke(app, ["measure", str(paths["a"]), str(paths["same"]), "--spec", str(paths["spec"]),
                               "--json", str(many), "-q", "--device", "cpu"])
    assert made.exit_code == 0, made.output
    audits: list[object] = []
    real = eqaudit.engine.run.audit
    monkeypatch.setattr(eqaudit.engine.run, "audit", lambda *a, **k: audits.append(a) or real(*a, **k))
    result = runner.invoke(app, ["measure", str(paths["a"]), "--spec", str(paths["spec"]), "--baseline", str(many),
                                 "--device", "cpu"])
    assert result.exit_code == 2 and "single-checkpoint report" in result.output and "many.json" in result.output
    assert audits == []  # refused before the model ran
