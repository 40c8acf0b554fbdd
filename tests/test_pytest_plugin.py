"""The pytest plugin: entry point, lazy imports, marker, options, failure output (pytester)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points

import pytest

pytest_plugins = ["pytester"]


def _installed() -> bool:
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("eqaudit")
    except PackageNotFoundError:
        return False
    return True


@pytest.fixture(autouse=True)
def _plugin_loads_through_its_entry_point(request):
    """Inner pytest sessions find the plugin through the installed entry point."""
    if "pytester" in request.fixturenames and not _installed():
        pytest.skip("eqaudit is not installed (only on sys.path): inner sessions cannot autoload the plugin")

MODELS = textwrap.dedent(
    """
    import json
    import pytest
    import torch
    from eqaudit.testing import assert_equivariant

    class PixelSum(torch.nn.Module):
        def forward(self, x):
            return x.sum(dim=(-1, -2))

    class PixelReader(torch.nn.Module):
        def forward(self, x):
            return x[:, 0, 0, :1]

    def audit_sum(**kw):
        r = assert_equivariant(PixelSum(), [{"input": "rot90"}], shape=[1, 4, 4], **kw)
        print("REPORT", json.dumps({"samples": r.samples, "seed": r.seed}))
        return r
    """
)


def _reports(result) -> list[dict]:
    return [json.loads(line.split("REPORT ", 1)[1]) for line in result.outlines if "REPORT " in line]


def test_entry_point_is_declared():
    if not _installed():
        pytest.skip("eqaudit is not installed (only on sys.path): no entry points to read")
    eps = [ep for ep in entry_points(group="pytest11") if ep.name == "eqaudit"]
    assert eps and eps[0].value == "eqaudit.pytest_plugin"


def test_importing_the_plugin_does_not_import_torch():
    code = "import sys, eqaudit.pytest_plugin, eqaudit.testing; print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_session_with_the_plugin_does_not_import_torch(pytester):
    pytester.makepyfile(test_light="""
        import sys
        import pytest

        @pytest.mark.eqaudit(samples=8)
        def test_light(eqaudit_options):
            assert eqaudit_options == {"samples": 8, "seed": 3}
            assert "torch" not in sys.modules
        """)
    result = pytester.runpytest_subprocess("--strict-markers", "--eqaudit-seed", "3", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_marker_is_registered(pytester):
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.eqaudit(samples=None, seed=None*"])


def test_options_set_the_session_defaults(pytester):
    pytester.makepyfile(models=MODELS)
    pytester.makepyfile(test_opts="""
        from models import audit_sum

        def test_defaults():
            audit_sum()

        def test_own_argument_wins():
            audit_sum(samples=64, seed=1)
        """)
    result = pytester.runpytest("-s", "--strict-markers", "--eqaudit-samples", "128", "--eqaudit-seed", "7")
    result.assert_outcomes(passed=2)
    assert _reports(result) == [{"samples": 128, "seed": 7}, {"samples": 64, "seed": 1}]
    result.stdout.fnmatch_lines(["eqaudit: samples=128, seed=7"])


def test_without_options_the_spec_decides(pytester):
    pytester.makepyfile(models=MODELS)
    pytester.makepyfile(test_plain="""
        from models import audit_sum

        def test_plain():
            audit_sum()
        """)
    result = pytester.runpytest("-s")
    result.assert_outcomes(passed=1)
    assert _reports(result) == [{"samples": 1024, "seed": 0}]


def test_marker_overrides_options_and_call_overrides_marker(pytester):
    pytester.makepyfile(models=MODELS)
    pytester.makepyfile(test_marked="""
        import pytest
        from models import audit_sum

        pytestmark = pytest.mark.eqaudit(seed=11)

        @pytest.mark.eqaudit(samples=64)
        def test_function_marker():
            audit_sum()

        @pytest.mark.eqaudit(samples=64, seed=2)
        def test_closer_marker_wins():
            audit_sum()

        @pytest.mark.eqaudit(samples=64)
        def test_call_wins():
            audit_sum(seed=5)

        @pytest.fixture
        def audited():
            return audit_sum()

        @pytest.mark.eqaudit(samples=192)
        def test_fixture_sees_the_marker(audited, eqaudit_options):
            assert eqaudit_options == {"samples": 192, "seed": 11}
            assert audited.samples == 192

        def test_module_marker_and_option():
            audit_sum()
        """)
    result = pytester.runpytest("-s", "--strict-markers", "--eqaudit-samples", "256", "--eqaudit-seed", "9")
    result.assert_outcomes(passed=5)
    assert _reports(result) == [
        {"samples": 64, "seed": 11},
        {"samples": 64, "seed": 2},
        {"samples": 64, "seed": 5},
        {"samples": 192, "seed": 11},
        {"samples": 256, "seed": 11},
    ]


def test_defaults_do_not_leak_between_tests(pytester):
    pytester.makepyfile(models=MODELS)
    pytester.makepyfile(test_leak="""
        import pytest
        from eqaudit.testing import current_defaults

        @pytest.mark.eqaudit(samples=64)
        def test_a():
            assert current_defaults() == {"samples": 64}

        def test_b():
            assert current_defaults() == {}
        """)
    pytester.runpytest().assert_outcomes(passed=2)


def test_failure_shows_the_table_and_hides_the_helper(pytester):
    pytester.makepyfile(models=MODELS)
    pytester.makepyfile(test_fail="""
        from eqaudit.testing import assert_equivariant
        from models import PixelReader

        def test_reader_is_not_rot90_invariant():
            assert_equivariant(PixelReader(), [{"name": "quarter", "input": "rot90"}], shape=[1, 4, 4], samples=64)
        """)
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    assert "model is not equivariant: 1 of 1 check exceeds its threshold" in text
    assert "quarter" in text and "FAIL" in text and "threshold" in text
    assert "def assert_equivariant" not in text and "_failure_message" not in text  # frame hidden


def test_bad_marker_arguments_are_reported(pytester):
    pytester.makepyfile(test_badmark="""
        import pytest

        @pytest.mark.eqaudit(64)
        def test_positional():
            pass

        @pytest.mark.eqaudit(sample=64)
        def test_typo():
            pass
        """)
    result = pytester.runpytest()
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*keyword arguments only*", "*unknown option 'sample'*did you mean 'samples'*"])


@pytest.mark.parametrize("args", [["--eqaudit-samples", "0"], ["--eqaudit-seed", "-1"], ["--eqaudit-samples", "x"]])
def test_bad_option_values_are_usage_errors(pytester, args):
    pytester.makepyfile(test_ok="def test_ok():\n    pass\n")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--eqaudit-*"])


def test_disabled_plugin_and_explicit_loading(pytester, monkeypatch):
    pytester.makepyfile(test_fx="def test_fx(eqaudit_options):\n    assert eqaudit_options == {'seed': 4}\n")
    pytester.runpytest("-p", "no:eqaudit").assert_outcomes(errors=1)  # the fixture is gone
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    for name in ("eqaudit.pytest_plugin", "eqaudit"):
        result = pytester.runpytest_subprocess("-p", name, "--eqaudit-seed", "4", "-p", "no:cacheprovider")
        result.assert_outcomes(passed=1)
