"""Spec validation: every mistake names the file, the key path and the line."""

import pytest

from eqaudit.errors import EqauditError
from eqaudit.spec import load_spec

from conftest import write_spec

GOOD = """
model:
  factory: models.py:PixelReader
input:
  shape: [1, 8, 8]
  bounds: [0, 1]
samples: 128
seed: 3
checks:
  - name: flip
    input: hflip
    epsilon: 0.05
  - name: quarter
    input: rot90
    output: identity
    threshold: 1.0e-5
    weight: 2.0
  - name: small-rotation
    both: {rotate: {degrees: [-15, 15]}}
    distance: linf
"""


def test_good_spec_parses_with_defaults(project):
    spec = load_spec(write_spec(project, GOOD))
    assert [c.name for c in spec.checks] == ["flip", "quarter", "small-rotation"]
    flip, quarter, rot = spec.checks
    assert flip.threshold == flip.epsilon == 0.05  # threshold defaults to epsilon
    assert quarter.weight == 2.0 and quarter.epsilon == 0.0
    assert rot.both and rot.input is rot.output and rot.distance.name == "linf"
    assert flip.distance.name == "l2" and spec.samples == 128 and spec.seed == 3
    assert spec.base_dir == project


def _error(project, text):
    with pytest.raises(EqauditError) as info:
        load_spec(write_spec(project, text))
    return info.value


@pytest.mark.parametrize(
    "old, new, key, line, words",
    [
        ("samples: 128", "sample: 128", "sample", 6, "did you mean 'samples'"),
        ("input: hflip", "input: hflipp", "checks[0].input", 10, "did you mean 'hflip'"),
        ("degrees: [-15, 15]", "degree: [-15, 15]", "checks[2].both.rotate.degree", 18, "did you mean 'degrees'"),
        ("degrees: [-15, 15]", "degrees: [15, -15]", "checks[2].both.rotate.degrees", 18, "lo > hi"),
        ("distance: linf", "distance: l3", "checks[2].distance", 19, "unknown distance"),
        ("threshold: 1.0e-5", "threshold: -1", "checks[1].threshold", 15, ">= 0"),
        ("shape: [1, 8, 8]", "shape: [1, 0, 8]", "input.shape[1]", 4, ">= 1"),
        ("bounds: [0, 1]", "bounds: [1, 0]", "input.bounds", 5, "lo > hi"),
        ("name: quarter", "name: flip", "checks[1].name", 12, "used twice"),
        ("seed: 3", "seed: three", "seed", 7, "integer"),
    ],
)
def test_errors_name_key_and_line(project, old, new, key, line, words):
    assert old in GOOD
    exc = _error(project, GOOD.replace(old, new))
    assert exc.key == key, str(exc)
    assert exc.line == line, str(exc)
    assert words in str(exc)
    assert str(exc).startswith(str(project / "spec.yaml") + f":{line}: {key}: ")


def test_yaml_syntax_error_has_line(project):
    exc = _error(project, "input:\n  shape: [1, 8\nchecks: []\n")
    assert exc.line is not None and "invalid YAML" in str(exc)


def test_both_with_input_is_refused(project):
    exc = _error(project, GOOD.replace("    both: {rotate", "    input: hflip\n    both: {rotate"))
    assert exc.key == "checks[2].both"


def test_missing_checks_and_input(project):
    assert _error(project, "input: {shape: [3]}\n").key == "checks"
    assert _error(project, "checks: [{input: hflip}]\n").key == "input"
    assert _error(project, "- just a list\n").key is None


def test_num_funcs_validated(project):
    assert _error(project, GOOD + "num_funcs: 4\n").key == "num_funcs"
    assert load_spec(write_spec(project, GOOD + "num_funcs: 2\n")).num_funcs == 2
    assert load_spec(write_spec(project, GOOD + "num_funcs: all\n")).num_funcs is None


def test_duplicate_yaml_keys_are_errors(project):
    exc = _error(project, GOOD.replace("seed: 3", "seed: 3\nseed: 4"))
    assert exc.key == "seed" and "duplicate" in str(exc)


def test_missing_file_and_data_file(project, tmp_path):
    with pytest.raises(EqauditError, match="file not found"):
        load_spec(tmp_path / "nope.yaml")
    exc = _error(project, GOOD.replace("  bounds: [0, 1]", "  data: missing.safetensors:x"))
    assert exc.key == "input.data" and "not found" in str(exc)


def test_composition_and_user_callables(project):
    (project / "mytf.py").write_text("def negate(x):\n    return -x\n")
    spec = load_spec(write_spec(project, GOOD.replace("input: hflip", "input: [hflip, vflip, mytf.py:negate]")))
    assert spec.checks[0].input.describe() == "hflip then vflip then mytf.py:negate"
    exc = _error(project, GOOD.replace("input: hflip", "input: [hflip, {rot90: {k: one}}]"))
    assert exc.key == "checks[0].input[1].rot90.k"
