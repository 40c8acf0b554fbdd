"""The CLI's error contract (issue 12 section 5, issue 13): usage errors are one line and exit 2
like every other error, library errors name the command's options, validate refuses what measure
would refuse for a spec reason, and ``eqaudit measure`` loads no fine-tune code."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from eqaudit.cli import app
from eqaudit.cli.app import COMMANDS
from eqaudit.cli.errors import FLAGS
from eqaudit.errors import ArgumentError

from conftest import write_spec

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()

SPEC = """
model: {factory: models.py:PixelReader}
input: {shape: [1, 8, 8]}
samples: 64
checks:
  - {name: flip, input: hflip, threshold: 1}
"""


def _one_line_2(r, *words: str) -> str:
    assert r.exit_code == 2, r.output
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith("eqaudit: error:"), r.stderr
    assert all(w in line for w in words), line
    assert "╭" not in r.output and "Usage:" not in r.output
    return line


# -- usage errors -------------------------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["measure", "--spec", "s.yaml", "--samples", "abc"], ["--samples", "integer"]),
    (["measure", "--spec", "s.yaml", "--sampels", "5"], ["--sampels"]),
    (["measure"], ["--spec"]),
    (["sweep", "--spec", "s.yaml", "--check", "c", "--param", "p", "--values", "1", "--samples", "x"], ["--samples"]),
    (["finetune", "c.yaml", "--steps", "many"], ["--steps"]),
    (["nosuchcommand"], ["nosuchcommand"]),
])
def test_usage_errors_are_one_line_and_exit_2(args: list[str], words: list[str]) -> None:
    _one_line_2(runner.invoke(app, args), *words)


def test_usage_error_of_python_m_eqaudit_is_one_line(tmp_path: Path) -> None:
    for args in (["measure", "--spec", "s.yaml", "--samples", "abc"], ["measure", "--bogus"]):
        done = subprocess.run([sys.executable, "-m", "eqaudit", *args], capture_output=True, text=True,
                              cwd=tmp_path, timeout=120)
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("eqaudit: error:"), done.stderr
        assert done.stdout == ""


def test_help_still_works() -> None:
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0 and all(name in r.output for name in COMMANDS)
    r = runner.invoke(app, ["measure", "--help"])
    assert r.exit_code == 0 and "--samples" in r.output


# -- library errors name the option ---------------------------------------------------------------
def test_flags_name_real_options() -> None:
    """Every mapped option is an option of some command (a renamed option would break the map)."""
    options = set()
    for name in COMMANDS:
        command = typer.main.get_command(app).commands[name]
        options |= {opt for p in command.params for opt in getattr(p, "opts", [])}
    assert set(FLAGS.values()) <= options, set(FLAGS.values()) - options


@pytest.mark.parametrize("argument, flag", [("batch_size", "--batch-size"), ("samples", "--samples"),
                                            ("max_samples", "--max-samples"), ("checkpoint", "CHECKPOINT"),
                                            ("precision", "--precision"), ("gate", "--gate")])
def test_an_argument_error_from_the_library_shows_the_flag(project: Path, monkeypatch, argument: str,
                                                          flag: str) -> None:
    import eqaudit.engine.run

    def bad(*a, **k):
        raise ArgumentError(argument, f"{argument} must be >= 1, got 0")

    monkeypatch.setattr(eqaudit.engine.run, "audit", bad)
    r = runner.invoke(app, ["measure", "--spec", str(write_spec(project, SPEC))])
    line = _one_line_2(r, f"{flag}: must be >= 1, got 0")
    assert f" {argument}:" not in line


def test_real_library_argument_errors_show_flags(project: Path) -> None:
    spec = str(write_spec(project, SPEC))
    _one_line_2(runner.invoke(app, ["measure", "--spec", spec, "--samples", "0"]), "--samples:")
    _one_line_2(runner.invoke(app, ["measure", "--spec", spec, "--batch-size", "0"]), "--batch-size:")
    _one_line_2(runner.invoke(app, ["measure", "--spec", spec, "--gate", "median"]), "--gate:")


def test_unexpected_errors_name_the_spec(project: Path, monkeypatch) -> None:
    import eqaudit.engine.run

    def boom(*a, **k):
        raise RuntimeError("The size of tensor a (7) must match the size of tensor b (8)")

    monkeypatch.setattr(eqaudit.engine.run, "audit", boom)
    spec = write_spec(project, SPEC)
    _one_line_2(runner.invoke(app, ["measure", "--spec", str(spec)]), str(spec), "RuntimeError: The size of tensor a")


# -- validate refuses what measure refuses for a spec reason ----------------------------------------
BAD_SPECS = {
    "permute with 3 entries on a dimension of 10": ("""
        model: {factory: models.py:PixelReader}
        input: {shape: [10, 4]}
        checks:
          - {name: p, input: {permute: {dim: 0, perm: [2, 0, 1]}}, threshold: 1}
        """, "checks[0].input"),
    "mask valid with transpose on a non-square image": ("""
        model: {factory: models.py:PixelReader}
        input: {shape: [1, 4, 6]}
        checks:
          - {name: t, input: transpose, mask: valid, threshold: 1}
        """, "checks[0].mask"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_validate_refuses_what_measure_refuses(project: Path, case: str) -> None:
    text, key = BAD_SPECS[case]
    spec = str(write_spec(project, text))
    line = _one_line_2(runner.invoke(app, ["validate", spec]), spec, key)
    assert _one_line_2(runner.invoke(app, ["measure", "--spec", spec, "--samples", "8"])).startswith("eqaudit: error:")
    assert "--debug" not in line


def test_validate_accepts_a_transpose_check_compared_with_a_transposed_output(project: Path) -> None:
    spec = write_spec(project, """
        model: {factory: models.py:PixelReader}
        input: {shape: [1, 4, 6]}
        checks:
          - {name: t, both: transpose, mask: valid, threshold: 1}
        """)
    assert runner.invoke(app, ["validate", str(spec)]).exit_code == 0


@pytest.fixture
def finetune_sample(tmp_path: Path) -> Path:
    for name in ("finetune_digits.yaml", "digits.safetensors", "digits_cnn.safetensors"):
        shutil.copy(ROOT / "sample_configs" / name, tmp_path / name)
    shutil.copytree(ROOT / "sample_configs" / "sample_models", tmp_path / "sample_models")
    return tmp_path / "finetune_digits.yaml"


def test_validate_opens_the_finetune_data_keys(finetune_sample: Path) -> None:
    assert runner.invoke(app, ["validate", str(finetune_sample)]).exit_code == 0
    text = finetune_sample.read_text()
    import re

    key = re.search(r"inputs: (\w+)", text).group(1)
    finetune_sample.write_text(text.replace(f"inputs: {key}", f"inputs: {key}x", 1))
    _one_line_2(runner.invoke(app, ["validate", str(finetune_sample)]), "data.inputs", f"no tensor '{key}x'",
                f"did you mean '{key}'")


def test_validate_refuses_a_checkpoint_that_is_a_fifo(project: Path) -> None:
    import os

    os.mkfifo(project / "ckpt.pt")
    spec = write_spec(project, SPEC.replace("{factory: models.py:PixelReader}",
                                            "{factory: models.py:PixelReader, checkpoint: ckpt.pt}"))
    _one_line_2(runner.invoke(app, ["validate", str(spec)]), "model.checkpoint", "FIFO")
    _one_line_2(runner.invoke(app, ["measure", "--spec", str(spec)]), "model.checkpoint", "FIFO")


@pytest.mark.parametrize("command", ["measure", "sweep"])
def test_a_data_file_that_is_a_fifo_is_refused_before_the_run(project: Path, command: str) -> None:
    """A FIFO as input.data must never block a run (opening it waits for a writer)."""
    import os

    os.mkfifo(project / "data.safetensors")
    spec = write_spec(project, SPEC.replace("input: {shape: [1, 8, 8]}", "input: {data: data.safetensors:x}"))
    args = ["measure", "--spec", str(spec)] if command == "measure" else [
        "sweep", "--spec", str(spec), "--check", "flip", "--param", "p", "--values", "1"]
    _one_line_2(runner.invoke(app, args), "input.data", str(spec))  # the spec's own check may say so first
    _one_line_2(runner.invoke(app, ["validate", str(spec)]), "input.data")


def test_a_command_line_checkpoint_that_is_a_fifo_is_refused(project: Path) -> None:
    import os

    os.mkfifo(project / "ckpt.pt")
    spec = str(write_spec(project, SPEC))
    _one_line_2(runner.invoke(app, ["measure", str(project / "ckpt.pt"), "--spec", spec]), "CHECKPOINT", "FIFO")
    _one_line_2(runner.invoke(app, ["sweep", "--spec", spec, "--check", "flip", "--param", "p", "--values", "1",
                                    "--checkpoint", str(project / "ckpt.pt")]), "--checkpoint", "FIFO")
