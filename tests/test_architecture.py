"""The shape of the house: small modules, short functions, imports that flow one way.

Imports are read with ``ast`` (imports inside functions count too), so a cycle hidden in a
function body is still a cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("eqaudit", "transforms_zoo")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The project modules that ``name`` imports, anywhere in its body."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [stem] + [f"{stem}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in MODULES:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(GRAPH[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(GRAPH):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_no_import_cycle() -> None:
    assert _cycle() is None, " -> ".join(_cycle() or [])


def test_transforms_zoo_is_a_leaf() -> None:
    bad = {n: sorted(m for m in deps if m.startswith("eqaudit")) for n, deps in GRAPH.items()
           if n.startswith("transforms_zoo")}
    assert not {n: d for n, d in bad.items() if d}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_small(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{MODULES[name].relative_to(ROOT)}: {lines} lines"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_functions_are_short(name: str) -> None:
    tree = ast.parse(MODULES[name].read_text())
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{MODULES[name].relative_to(ROOT)}: {', '.join(long)}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_says_its_job(name: str) -> None:
    tree = ast.parse(MODULES[name].read_text())
    assert ast.get_docstring(tree), f"{MODULES[name].relative_to(ROOT)} has no module docstring"


def test_measure_loads_no_finetune_module(tmp_path: Path) -> None:
    """What ``eqaudit measure`` imports, run for real on the bundled sample."""
    code = (
        "import sys, runpy\n"
        "sys.argv = ['eqaudit', 'measure', '--spec', 'sample_configs/digits.yaml', '--samples', '64', '--quiet',"
        f" '--json', {str(tmp_path / 'r.json')!r}]\n"
        "try:\n    runpy.run_module('eqaudit', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('eqaudit.finetune') or m == 'eqaudit.cli.finetune'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert (tmp_path / "r.json").exists(), out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_public_imports_are_the_documented_objects() -> None:
    """``from eqaudit import audit`` is the function (a subpackage named ``audit`` once shadowed it)."""
    import eqaudit
    import eqaudit.engine.run
    from eqaudit import EquivarianceError, audit

    assert callable(audit) and audit is eqaudit.engine.run.audit
    assert eqaudit.audit is audit
    assert EquivarianceError.__name__ == "EquivarianceError"
