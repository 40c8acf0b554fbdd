"""Outputs never replace the run's inputs or each other (issue 12, section 2): every clash is exit
2 before the run, naming both keys, and the input is left byte for byte as it was."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eqaudit.cli import app

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()

INPUTS = {"spec": "digits.yaml", "model.checkpoint": "digits_cnn.safetensors", "input.data": "digits.safetensors",
          "model.factory": "sample_models/digits.py"}


@pytest.fixture
def digits(tmp_path: Path, monkeypatch) -> Path:
    """A copy of the bundled digits sample; the audit itself must never start."""
    for name in ("digits.yaml", "digits.safetensors", "digits_cnn.safetensors"):
        shutil.copy(ROOT / "sample_configs" / name, tmp_path / name)
    shutil.copytree(ROOT / "sample_configs" / "sample_models", tmp_path / "sample_models")
    import eqaudit.engine.run
    import eqaudit.engine.sweep

    def no_run(*a, **k):
        raise AssertionError("the run started before the outputs were checked")

    monkeypatch.setattr(eqaudit.engine.run, "audit", no_run)
    monkeypatch.setattr(eqaudit.engine.sweep, "run_sweep", no_run)
    for name in [m for m in sys.modules if m.split(".")[0] == "sample_models"]:
        monkeypatch.delitem(sys.modules, name)  # imported from another copy by an earlier test
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _refused(digits: Path, args: list[str], input_name: str, *words: str) -> None:
    before = (digits / input_name).read_bytes()
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    line = r.stderr.strip()
    assert "\n" not in line and all(w in line for w in words), line
    assert (digits / input_name).read_bytes() == before


SWEEP = ["sweep", "--spec", "digits.yaml", "--check", "rot90", "--param", "k", "--values", "1,2"]


@pytest.mark.parametrize("flag", ["--json", "--junit", "--markdown"])
@pytest.mark.parametrize("key", sorted(INPUTS))
def test_measure_report_onto_an_input(digits: Path, flag: str, key: str) -> None:
    name = INPUTS[key]
    _refused(digits, ["measure", "--spec", "digits.yaml", flag, name], name, flag, f"({key})",
             "never replaces an input")


def test_measure_report_onto_the_command_line_checkpoint(digits: Path) -> None:
    shutil.copy(digits / "digits_cnn.safetensors", digits / "other.safetensors")
    _refused(digits, ["measure", "other.safetensors", "--spec", "digits.yaml", "--json", "other.safetensors"],
             "other.safetensors", "--json", "(CHECKPOINT)")


def test_measure_report_onto_a_link_to_the_spec(digits: Path) -> None:
    os.symlink(digits / "digits.yaml", digits / "link.yaml")
    _refused(digits, ["measure", "--spec", "digits.yaml", "--junit", "link.yaml"], "digits.yaml", "(spec)")


def test_measure_two_reports_onto_one_file(digits: Path) -> None:
    r = runner.invoke(app, ["measure", "--spec", "digits.yaml", "--json", "r.out", "--junit", "r.out"])
    assert r.exit_code == 2 and "--json and --junit both write 'r.out'" in r.stderr
    assert not (digits / "r.out").exists()


def test_measure_step_summary_pointing_at_the_spec(digits: Path, monkeypatch) -> None:
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(digits / "digits.yaml"))
    _refused(digits, ["measure", "--spec", "digits.yaml", "--markdown", os.environ["GITHUB_STEP_SUMMARY"]],
             "digits.yaml", "--markdown ($GITHUB_STEP_SUMMARY)", "(spec)")


@pytest.mark.parametrize("flag", ["--json", "--plot"])
@pytest.mark.parametrize("key", ["spec", "model.checkpoint", "input.data", "model.factory"])
def test_sweep_output_onto_an_input(digits: Path, flag: str, key: str) -> None:
    name = INPUTS[key]
    _refused(digits, [*SWEEP, flag, name], name, flag, f"({key})")


def test_sweep_output_onto_the_command_line_checkpoint(digits: Path) -> None:
    shutil.copy(digits / "digits_cnn.safetensors", digits / "other.safetensors")
    _refused(digits, [*SWEEP, "--checkpoint", "other.safetensors", "--plot", "other.safetensors"],
             "other.safetensors", "--plot", "(--checkpoint)")


def test_sweep_json_and_plot_onto_one_file(digits: Path) -> None:
    r = runner.invoke(app, [*SWEEP, "--json", "s.out", "--plot", "s.out"])
    assert r.exit_code == 2 and "--json and --plot both write 's.out'" in r.stderr


def test_streams_are_not_files(digits: Path) -> None:
    """``-`` and /dev/stdout may be named by several options: nothing is replaced."""
    r = runner.invoke(app, ["measure", "--spec", "digits.yaml", "--json", "-", "--junit", "/dev/stdout"])
    assert "the run started before the outputs were checked" in r.stderr, r.output  # it got past the check


def test_finetune_json_onto_its_config(tmp_path: Path) -> None:
    for name in ("finetune_digits.yaml", "digits.safetensors", "digits_cnn.safetensors"):
        shutil.copy(ROOT / "sample_configs" / name, tmp_path / name)
    shutil.copytree(ROOT / "sample_configs" / "sample_models", tmp_path / "sample_models")
    for name in ("finetune_digits.yaml", "digits.safetensors"):
        before = (tmp_path / name).read_bytes()
        r = runner.invoke(app, ["finetune", str(tmp_path / "finetune_digits.yaml"), "--json", str(tmp_path / name)])
        assert r.exit_code == 2 and "--json" in r.stderr and "never replaces an input" in r.stderr, r.output
        assert (tmp_path / name).read_bytes() == before
