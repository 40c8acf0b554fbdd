"""The eqaudit pytest plugin, registered through the ``pytest11`` entry point.

- Options ``--eqaudit-samples N`` and ``--eqaudit-seed S`` set the session's defaults for
  :func:`eqaudit.testing.assert_equivariant` (a call's own arguments still win).
- The marker ``@pytest.mark.eqaudit(samples=..., seed=..., atol=..., rtol=..., device=...)`` sets
  them for one test (or a class or module, through ``pytestmark``); it takes precedence over the
  command-line options, as ``@pytest.mark.timeout`` does over ``--timeout``. The defaults apply
  while the test's fixtures are set up, while it runs and while they are torn down.
- The fixture ``eqaudit_options`` returns the defaults in force for the test as a dict.

Importing this module imports neither torch nor the rest of eqaudit's engine: the plugin is
loaded into every pytest session of an environment where eqaudit is installed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterator
from typing import Any

import pytest

MARKER = "eqaudit"
_MARKER_DOC = (
    "eqaudit(samples=None, seed=None, atol=None, rtol=None, device=None): defaults for "
    "eqaudit.testing.assert_equivariant within this test (over --eqaudit-samples/--eqaudit-seed)"
)


def _nonnegative_int(minimum: int) -> Any:
    def parse(text: str) -> int:
        import argparse

        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("eqaudit", "equivariance assertions (eqaudit.testing)")
    group.addoption("--eqaudit-samples", type=_nonnegative_int(1), default=None, metavar="N",
                    help="Monte Carlo samples for assert_equivariant (default: the spec's).")
    group.addoption("--eqaudit-seed", type=_nonnegative_int(0), default=None, metavar="S",
                    help="Random seed for assert_equivariant (default: the spec's).")


_PREVIOUS = pytest.StashKey[dict]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _MARKER_DOC)
    from . import testing  # light: no torch at import

    config.stash[_PREVIOUS] = dict(testing._session_defaults)  # nested sessions (pytester) restore it
    testing._set_session_defaults(
        samples=config.getoption("eqaudit_samples", None),
        seed=config.getoption("eqaudit_seed", None),
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    from . import testing

    testing._set_session_defaults(**config.stash.get(_PREVIOUS, {}))


def pytest_report_header(config: pytest.Config) -> str | None:
    parts = [f"{name}={config.getoption(f'eqaudit_{name}', None)}" for name in ("samples", "seed")
             if config.getoption(f"eqaudit_{name}", None) is not None]
    return "eqaudit: " + ", ".join(parts) if parts else None


def _marker_options(item: pytest.Item) -> dict[str, Any]:
    """The options of the item's ``eqaudit`` markers, validated; a closer marker wins key by key.

    Raises ``TypeError`` with a readable message for positional or unknown arguments.
    """
    from . import testing

    merged: dict[str, Any] = {}
    for mark in reversed(list(item.iter_markers(MARKER))):  # farthest first
        if mark.args:
            raise TypeError(
                "@pytest.mark.eqaudit takes keyword arguments only (samples=, seed=, atol=, rtol=, device=), "
                f"got positional {', '.join(map(repr, mark.args))}"
            )
        merged.update(mark.kwargs)
    testing._check_options(merged, "@pytest.mark.eqaudit")
    return merged


@contextlib.contextmanager
def _scoped(item: pytest.Item, *, report: bool) -> Iterator[None]:
    """Apply the item's marker options to eqaudit.testing's defaults for one test phase. A bad
    marker fails the test's setup (``report``) with one line; the other phases then ignore it."""
    try:
        options = _marker_options(item)
    except TypeError as exc:
        if report:
            pytest.fail(f"{item.nodeid}: {exc}", pytrace=False)
        options = {}
    if not options:
        yield
        return
    from . import testing

    with testing.defaults(**options):
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, Any, Any]:
    with _scoped(item, report=True):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    with _scoped(item, report=False):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, Any, Any]:
    with _scoped(item, report=False):
        return (yield)


@pytest.fixture
def eqaudit_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The defaults that assert_equivariant uses in this test (options, then the marker)."""
    from . import testing

    merged = testing.current_defaults()
    try:
        marker = _marker_options(request.node)
    except TypeError:
        marker = {}
    merged.update({k: v for k, v in marker.items() if v is not None})
    return merged
