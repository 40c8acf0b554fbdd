"""The ``eqaudit`` command sets glibc's allocator for repeated model calls; the user's own malloc
settings, an opt-out variable and other platforms leave it alone."""

from __future__ import annotations

import subprocess
import sys

import pytest

from eqaudit import allocator


def test_skipped_off_linux_with_an_opt_out_or_the_users_own_settings(monkeypatch):
    assert not allocator.steady_allocator({allocator.OPT_OUT: "1"})
    for key in allocator.USER_SETTINGS:
        assert not allocator.steady_allocator({key: "65536"})
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not allocator.steady_allocator({}, force=True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_takes_on_glibc_in_a_fresh_process():
    code = "from eqaudit.allocator import steady_allocator; print(steady_allocator({}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    import platform

    assert out.stdout.strip() == str(platform.libc_ver()[0] == "glibc")


def test_the_console_script_applies_it_before_the_app(monkeypatch):
    import importlib

    app_module = importlib.import_module("eqaudit.cli.app")  # the module, not the Typer app

    calls = []
    monkeypatch.setattr(allocator, "steady_allocator", lambda: calls.append("allocator"))
    monkeypatch.setattr(app_module, "app", lambda: calls.append("app"))
    app_module.main()
    assert calls == ["allocator", "app"]
