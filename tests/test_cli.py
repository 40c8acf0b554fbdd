"""The command line: exit codes 0 / 1 / 2, reports, and one-line errors."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from eqaudit.cli import app

from conftest import write_spec

runner = CliRunner()

SPEC = """
model:
  factory: models.py:PixelReader
input:
  shape: [1, 8, 8]
samples: 512
checks:
  - name: flip
    input: hflip
    distance: l1
    threshold: {flip}
  - name: identity
    input: identity
    threshold: 0
"""


def _spec(project, flip=1.0):
    return write_spec(project, SPEC.format(flip=flip))


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_measure_passes_with_exit_0_and_prints_table(project):
    r = run("measure", "--spec", _spec(project))
    assert r.exit_code == 0, r.output
    assert "flip" in r.output and "PASS" in r.output and "512 samples" in r.output


def test_measure_gate_fails_with_exit_1(project):
    r = run("measure", "--spec", _spec(project, flip=0.1))
    assert r.exit_code == 1
    assert "FAIL" in r.output


def test_json_to_stdout_only(project):
    r = run("measure", "--spec", _spec(project), "--json", "-")
    assert r.exit_code == 0
    data = json.loads(r.stdout)
    assert data["tool"] == "eqaudit" and data["samples"] == 512 and data["passed"] is True
    flip = data["checks"][0]
    for field in ["name", "input", "output", "distance", "n", "mean", "std", "stderr", "ci_low", "ci_high",
                  "confidence", "epsilon", "threshold", "weight", "penalty", "passed"]:
        assert field in flip
    assert flip["ci_low"] <= 1 / 3 <= flip["ci_high"] or abs(flip["mean"] - 1 / 3) < 0.05


def test_two_batch_sizes_give_identical_json_numbers(project):
    spec = _spec(project)
    outs = []
    for bs in (64, 320):
        r = run("measure", "--spec", spec, "--json", "-", "--batch-size", bs, "--samples", 1000)
        outs.append(json.loads(r.stdout)["checks"])
    assert outs[0] == outs[1]


def test_report_files(project, tmp_path):
    j, x, m = tmp_path / "r.json", tmp_path / "r.xml", tmp_path / "r.md"
    r = run("measure", "--spec", _spec(project, flip=0.1), "--json", j, "--junit", x, "--markdown", m, "--quiet")
    assert r.exit_code == 1 and r.stdout == ""
    assert json.loads(j.read_text())["passed"] is False
    suite = ET.parse(x).getroot()
    cases = suite.findall(".//testcase")
    assert [c.get("name") for c in cases] == ["flip", "identity"]
    assert cases[0].find("failure") is not None and cases[1].find("failure") is None
    md = m.read_text()
    assert "| flip |" in md and "FAIL" in md


def test_checkpoint_argument_overrides_spec(project):
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 4)
    save_file({f"fc.{k}": v for k, v in lin.state_dict().items()}, str(project / "lin.safetensors"))
    spec = write_spec(project, """
    model:
      factory: models.py:Linear
      kwargs: {n: 64}
      checkpoint: missing.safetensors
    input: {shape: [1, 8, 8]}
    samples: 64
    checks: [{input: identity}]
    """)
    assert run("measure", project / "lin.safetensors", "--spec", spec).exit_code == 0
    r = run("measure", "--spec", spec)
    assert r.exit_code == 2


@pytest.mark.parametrize(
    "args, words",
    [
        (["--samples", "0"], "--samples"),
        (["--gate", "median"], "--gate"),
        (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
        (["--confidence", "1.5"], "--confidence"),
    ],
)
def test_bad_options_exit_2_with_one_line(project, args, words):
    r = run("measure", "--spec", _spec(project), *args)
    assert r.exit_code == 2
    assert words in r.stderr and "Traceback" not in r.output
    assert len(r.stderr.strip().splitlines()) == 1


def test_bad_spec_exit_2_names_file_key_line(project):
    path = write_spec(project, SPEC.format(flip=1).replace("input: hflip", "input: hflp"))
    r = run("measure", "--spec", path)
    assert r.exit_code == 2
    assert f"{path}:8: checks[0].input: unknown transform 'hflp'" in r.stderr
    assert "did you mean 'hflip'" in r.stderr


def test_debug_shows_traceback(project):
    path = write_spec(project, SPEC.format(flip=1).replace("input: hflip", "input: hflp"))
    r = run("measure", "--spec", path, "--debug")
    assert r.exit_code != 0 and r.exception is not None


def test_validate(project):
    assert run("validate", _spec(project)).exit_code == 0
    bad = write_spec(project, SPEC.format(flip=1).replace("models.py:PixelReader", "nomodels.py:X"), "bad.yaml")
    r = run("validate", bad)
    assert r.exit_code == 2 and "model.factory" in r.stderr


def test_transforms_list_and_doc():
    r = run("transforms")
    assert r.exit_code == 0 and "rot90" in r.stdout and "shift" in r.stdout
    r = run("transforms", "rotate")
    assert r.exit_code == 0 and "degrees" in r.stdout
    r = run("transforms", "rotat")
    assert r.exit_code == 2 and "did you mean 'rotate'" in r.stderr


def test_every_command_has_help():
    for cmd in ["measure", "validate", "transforms"]:
        r = run(cmd, "--help")
        assert r.exit_code == 0 and "Usage" in r.stdout


def test_measure_and_validate_accept_a_finetune_config():
    from pathlib import Path

    cfg = Path(__file__).resolve().parents[1] / "sample_configs" / "finetune_digits.yaml"
    assert run("validate", cfg).exit_code == 0
    r = run("measure", "--spec", cfg, "--samples", 128, "--json", "-")
    assert r.exit_code == 1  # the bundled checkpoint is far from rot90-invariant
    assert [c["name"] for c in json.loads(r.stdout)["checks"]] == ["rot90", "hflip"]


# -- report outputs that cannot be written: exit 2 naming the flag and the path ------------------
def _one_line_exit_2(r, *words):
    assert r.exit_code == 2, r.output
    assert all(w in r.stderr for w in words), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "--debug" not in r.stderr and "Traceback" not in r.output


@pytest.mark.parametrize("flag", ["--json", "--junit", "--markdown"])
def test_report_to_a_directory_is_exit_2_before_the_run(project, tmp_path, monkeypatch, flag):
    import eqaudit.engine.run

    def no_audit(*a, **k):
        raise AssertionError("the audit ran before the output path was checked")

    monkeypatch.setattr(eqaudit.engine.run, "audit", no_audit)
    _one_line_exit_2(run("measure", "--spec", _spec(project), flag, tmp_path), f"{flag}: '{tmp_path}' is a directory")
    _one_line_exit_2(run("measure", "--spec", _spec(project), flag, "/"), f"{flag}: '/' is a directory")
    through_file = _spec(project) / "r.out"
    _one_line_exit_2(run("measure", "--spec", _spec(project), flag, through_file),
                     f"{flag}: cannot write '{through_file}'", "is a file, not a folder")


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self"), reason="needs /proc")
def test_report_into_a_folder_without_files_is_exit_2(project):
    _one_line_exit_2(run("measure", "--spec", _spec(project), "--json", "/proc/x.json"),
                     "--json: cannot write '/proc/x.json'", "folder '/proc'")
    _one_line_exit_2(run("measure", "--spec", _spec(project), "--junit", "/proc/no/such/x.xml"),
                     "--junit: cannot write '/proc/no/such/x.xml'", "folder '/proc'")


@pytest.mark.skipif(not __import__("os").path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_report_to_a_full_device_is_exit_2(project):
    _one_line_exit_2(run("measure", "--spec", _spec(project), "--json", "/dev/full"),
                     "--json: cannot write '/dev/full'", "No space left")
    assert Path("/dev/full").exists() and not Path("/dev/full").is_file()  # written into, not replaced


def test_a_failed_write_after_the_run_names_the_flag(project, tmp_path, monkeypatch):
    import errno

    import eqaudit.io.outputs

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(eqaudit.io.outputs, "write_text_atomic", full)
    m = tmp_path / "r.md"
    _one_line_exit_2(run("measure", "--spec", _spec(project), "--markdown", m),
                     f"--markdown: cannot write '{m}': No space left on device")


def test_reports_into_new_folders_are_atomic_and_leave_no_temporary_files(project, tmp_path):
    j, x, m = tmp_path / "a" / "r.json", tmp_path / "b" / "c" / "r.xml", tmp_path / "r.md"
    m.write_text("old")
    r = run("measure", "--spec", _spec(project), "--json", j, "--junit", x, "--markdown", m, "-q")
    assert r.exit_code == 0, r.output
    assert json.loads(j.read_text())["passed"] is True and ET.parse(x).getroot().tag == "testsuites"
    assert m.read_text().startswith("### eqaudit: PASSED")
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_json_to_a_stream_link_writes_into_it_instead_of_replacing_it(project, tmp_path):
    # like '--json /dev/stdout > out.txt': the link leads to a regular file, but renaming a new file
    # onto the link would replace the link (as root, /dev/stdout itself) and lose the output
    out = tmp_path / "out.txt"
    out.write_text("before\n")
    with open(out, "a") as fh:
        r = run("measure", "--spec", _spec(project), "--json", f"/proc/self/fd/{fh.fileno()}", "-q")
    assert r.exit_code == 0, r.output
    before, rest = out.read_text().split("\n", 1)
    assert before == "before" and json.loads(rest)["tool"] == "eqaudit"
