"""Packaging and first steps: the samples ship inside the package (``eqaudit demo`` runs without a
clone), ``eqaudit init`` writes starter specs that validate, and ``--version`` has one source."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eqaudit import __version__
from eqaudit.cli import app
from eqaudit.cli.demo import samples_dir
from eqaudit.cli.init import TASKS

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_version_prints_the_package_version():
    result = run("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"eqaudit {__version__}"


def test_the_samples_folder_is_the_packaged_sample_configs():
    folder = samples_dir()
    assert (folder / "digits.yaml").read_bytes() == (ROOT / "sample_configs" / "digits.yaml").read_bytes()
    assert (folder / "digits_cnn.safetensors").is_file() and (folder / "sample_models" / "digits.py").is_file()


def test_demo_reports_what_measure_reports_on_the_bundled_spec(tmp_path):
    demo_json, measure_json = tmp_path / "demo.json", tmp_path / "measure.json"
    demo = run("demo", "--samples", 128, "--json", demo_json, "-q")
    measure = run("measure", "--spec", ROOT / "sample_configs" / "digits.yaml", "--samples", 128,
                  "--json", measure_json, "-q")
    assert demo.exit_code == measure.exit_code == 0, demo.output
    a, b = json.loads(demo_json.read_text()), json.loads(measure_json.read_text())
    assert [c["name"] for c in a["checks"]] == [c["name"] for c in b["checks"]] and len(a["checks"]) == 6
    assert [c["mean"] for c in a["checks"]] == [c["mean"] for c in b["checks"]]


def test_demo_writes_the_html_report(tmp_path):
    page = tmp_path / "demo.html"
    assert run("demo", "--samples", 64, "--html", page, "-q").exit_code == 0
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "PASSED" in text and 'data-check="rot90"' in text


def test_demo_of_the_failing_sample_exits_1_and_an_unknown_sample_exits_2(tmp_path):
    assert run("demo", "--sample", "digits_invariance", "--samples", 64, "-q").exit_code == 1
    result = run("demo", "--sample", "digit")
    assert result.exit_code == 2 and "--sample" in result.output and "digits" in result.output


@pytest.mark.parametrize("task", TASKS)
def test_init_writes_a_spec_that_validates(tmp_path, task):
    shape = "256,3" if task == "points" else "3,32,32"
    (tmp_path / "model.pt").write_bytes(b"")
    spec = tmp_path / "spec.yaml"
    result = run("init", spec, "--shape", shape, "--task", task)
    assert result.exit_code == 0, result.output
    assert spec.read_text().startswith("# eqaudit spec: " + task)
    result = run("validate", spec)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("shape", ["8,12,16", "64"])
def test_init_of_non_square_and_1d_inputs_validates(tmp_path, shape):
    (tmp_path / "model.pt").write_bytes(b"")
    spec = tmp_path / "spec.yaml"
    assert run("init", spec, "--shape", shape).exit_code == 0
    result = run("validate", spec)
    assert result.exit_code == 0, result.output


def test_init_refuses_to_overwrite_without_force(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("mine\n")
    result = run("init", spec, "--shape", "1,28,28")
    assert result.exit_code == 2 and "--force" in result.output
    assert spec.read_text() == "mine\n"
    assert run("init", spec, "--shape", "1,28,28", "--force").exit_code == 0
    assert "checks:" in spec.read_text()


@pytest.mark.parametrize("args, key", [(["--shape", "1,x"], "--shape"), (["--shape", "0,4"], "--shape"),
                                       (["--shape", "4", "--task", "points"], "--shape"),
                                       (["--shape", "4", "--task", "segmentation"], "--shape"),
                                       (["--shape", "4", "--task", "detection"], "--task")])
def test_init_refuses_bad_options_at_their_option(tmp_path, args, key):
    spec = tmp_path / "spec.yaml"
    result = run("init", spec, *args)
    assert result.exit_code == 2 and key in result.output
    assert not spec.exists()


def test_the_wheel_carries_the_samples_the_license_and_py_typed(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("eqaudit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n.removeprefix("eqaudit/_samples/") for n in names if n.startswith("eqaudit/_samples/")}
    tracked = subprocess.run(["git", "ls-files", "sample_configs"], cwd=ROOT, capture_output=True, text=True).stdout
    if tracked.strip():  # a clone: every tracked sample file is in the wheel
        assert {p.removeprefix("sample_configs/") for p in tracked.split()} <= shipped
    assert {"digits.yaml", "digits_cnn.safetensors", "digits.safetensors", "sample_models/digits.py"} <= shipped
    assert "eqaudit/py.typed" in names and "transforms_zoo/__init__.py" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not any("_finetuned" in n for n in names)


def test_the_extras_have_no_duplicates_and_the_test_extra_installs_what_tests_import():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    bodies = [tuple(sorted(v)) for v in extras.values()]
    assert len(bodies) == len(set(bodies)), extras  # 'adapters' was a copy of 'e3nn'
    assert {"e3nn", "onnx", "plot"} <= set(extras) and "adapters" not in extras
    names = {d.split(">")[0].split("=")[0].split("[")[0].strip() for d in extras["test"]}
    assert {"jsonschema", "onnx", "onnxruntime", "pytest", "hypothesis"} <= names
    assert project["dynamic"] == ["version"] and "version" not in project
