"""Spec validation: every mistake names the file, the key path and the line."""

import pytest
import yaml

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


# -- YAML aliases: linear time, bounded expansion, no recursion --------------------------------
def _billion_laughs(levels=9):
    """A spec whose 'layers' list holds anchors of 10**k values each: 10**9 values in all."""
    lines = ["model: {factory: models.py:PixelReader}", "input: {shape: [1, 8, 8]}", "checks: [{input: hflip}]",
             "layers:", "  - &a0 [x]"]
    lines += [f"  - &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def _with_alarm(seconds, fn):
    """Run fn, failing (rather than hanging) if it takes longer than ``seconds``."""
    import signal

    def timeout(*_):
        raise TimeoutError(f"took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    try:
        return fn()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_billion_laughs_is_refused_quickly(project):
    import time

    from eqaudit.io.yaml_source import parse_yaml

    text = "\n".join(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" if i else "a0: &a0 [x]"
                     for i in range(10))
    start = time.perf_counter()
    with pytest.raises(EqauditError) as info:
        _with_alarm(20, lambda: parse_yaml(text, "bomb.yaml"))
    assert time.perf_counter() - start < 5
    assert str(info.value).startswith("bomb.yaml:") and "aliases expand" in str(info.value)


def test_billion_laughs_spec_is_exit_2_for_validate_and_measure(project):
    from typer.testing import CliRunner

    from eqaudit.cli import app

    path = write_spec(project, _billion_laughs())
    for args in (["validate", str(path)], ["measure", "--spec", str(path)]):
        r = _with_alarm(30, lambda: CliRunner().invoke(app, args))
        assert r.exit_code == 2, r.output
        assert f"{path}:" in r.stderr and "aliases expand" in r.stderr and "--debug" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "text, line, key",
    [
        ("model: {factory: models.py:PixelReader}\ninput: {shape: [1, 8, 8]}\nlayers: &a [*a]\n"
         "checks: [{input: hflip}]\n", 3, "layers[0]"),
        ("input: {shape: [1, 8, 8]}\nchecks:\n  - &c\n    name: x\n    input: {both: *c}\n", 5, "checks[0].input.both"),
        ("&a [*a]\n", 1, "[0]"),
    ],
)
def test_recursive_alias_names_file_line_and_key(project, text, line, key):
    exc = _error(project, text)
    assert "recursive YAML alias" in str(exc) and exc.line == line and exc.key == key
    assert str(exc).startswith(f"{project / 'spec.yaml'}:{line}: ")


def test_recursive_alias_on_the_command_line_is_one_line_exit_2(project):
    from typer.testing import CliRunner

    from eqaudit.cli import app

    path = write_spec(project, "model: {factory: models.py:PixelReader}\ninput: {shape: [1, 8, 8]}\n"
                               "layers: &a [*a]\nchecks: [{input: hflip}]\n")
    r = CliRunner().invoke(app, ["validate", str(path)])
    assert r.exit_code == 2 and f"{path}:3: layers[0]: recursive YAML alias" in r.stderr
    assert "RecursionError" not in r.stderr and "--debug" not in r.stderr


def test_deeply_nested_yaml_is_an_error_not_a_recursion_error(project):
    exc = _error(project, "input: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nested too deeply" in str(exc) and str(exc).startswith(str(project / "spec.yaml"))


def test_aliases_within_bounds_still_work_and_keep_lines(project):
    # an anchored check reused: same values as written out, key paths under the alias still have lines
    text = GOOD.replace("  - name: flip\n", "  - &flip\n    name: flip\n") + "  - *flip\n"
    src_exc = _error(project, text)  # the reused check repeats the name 'flip'
    assert src_exc.key == "checks[3].name" and "used twice" in str(src_exc) and src_exc.line == 10
    shared = GOOD.replace("bounds: [0, 1]", "bounds: &b [0, 1]").replace("degrees: [-15, 15]", "degrees: *b")
    spec = load_spec(write_spec(project, shared))
    assert spec.checks[2].input.describe() == load_spec(write_spec(project, GOOD.replace(
        "degrees: [-15, 15]", "degrees: [0, 1]"))).checks[2].input.describe()
    from eqaudit.io.yaml_source import parse_yaml

    src = parse_yaml("a: &x {b: [1, 2]}\nc: *x\nd: [*x, *x]\n")
    assert src.data == {"a": {"b": [1, 2]}, "c": {"b": [1, 2]}, "d": [{"b": [1, 2]}] * 2}
    assert src.lines["c.b[1]"] == 1 and src.lines["d[1].b"] == 1 and src.line_of("c") == 2


def test_a_merged_key_may_be_set_again_as_in_yaml():
    # {<<: *d, a: 3} used to be refused as a duplicate key 'a'
    from eqaudit.io.yaml_source import parse_yaml

    text = "d: &d {a: 1, b: 2}\ne: {<<: *d, a: 3}\nf: {<<: [*d, {a: 9, c: 1}], c: 5}\n"
    src = parse_yaml(text)
    assert src.data == yaml.safe_load(text)
    assert src.lines["e.a"] == 2 and src.lines["e.b"] == 1
    with pytest.raises(EqauditError, match="duplicate key 'a'"):
        parse_yaml("d: &d {a: 1}\ne: {a: 2, <<: *d, a: 3}\n")
