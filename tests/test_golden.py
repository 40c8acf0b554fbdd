"""Golden reports: the bundled samples' JSON reports, recorded before the evaluation core was
redesigned, must come out identical (wall times and machine-specific paths aside)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from eqaudit.cli import app

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
VOLATILE = {"elapsed_s", "train_elapsed_s"}  # wall times
PATHS = {"checkpoint_in", "checkpoint_out", "state"}  # absolute paths of the run's folder


def _stable(obj: Any) -> Any:
    """``obj`` without wall times, with absolute paths reduced to their file names."""
    if isinstance(obj, dict):
        return {k: (Path(v).name if k in PATHS and isinstance(v, str) else _stable(v))
                for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_stable(v) for v in obj]
    return obj


def _run(args: list[str], expect: int) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == expect, result.output


@pytest.mark.parametrize(("name", "code"), [("digits", 0), ("digits_invariance", 1), ("blur", 0)])
def test_measure_reports_match_golden(name: str, code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    out = tmp_path / "report.json"
    _run(["measure", "--spec", f"sample_configs/{name}.yaml", "--json", str(out), "--quiet"], code)
    got = _stable(json.loads(out.read_text()))
    assert got == _stable(json.loads((GOLDEN / f"{name}.json").read_text()))


def test_finetune_report_matches_golden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "samples"
    shutil.copytree(ROOT / "sample_configs", run_dir, ignore=shutil.ignore_patterns("__pycache__", "*_finetuned*"))
    monkeypatch.chdir(run_dir)
    out = tmp_path / "finetune.json"
    _run(["finetune", "finetune_digits.yaml", "--json", str(out), "--quiet"], 0)
    got = _stable(json.loads(out.read_text()))
    assert got == _stable(json.loads((GOLDEN / "finetune.json").read_text()))
