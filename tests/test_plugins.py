"""Third-party transforms through the ``eqaudit.transforms`` entry-point group.

Each test writes a package and a ``*.dist-info`` folder (METADATA + entry_points.txt) into a
temporary folder on sys.path: importlib.metadata finds it there like an installed distribution.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import transforms_zoo
from transforms_zoo import TransformError, base
from eqaudit.cli import app

from conftest import write_spec

runner = CliRunner()

PLUGIN_CODE = textwrap.dedent(
    '''
    import torch
    from transforms_zoo import Param, Transform, register
    from transforms_zoo.base import number

    IMPORTS = [1]

    class Negate(Transform):
        """Multiplies by -1 (a Z2 action on signed outputs)."""
        name = "negate"
        summary = "multiply by -1"

        def apply(self, x, params):
            return -x

    class Gain2(Transform):
        name = "gain2"
        summary = "multiply by a factor"
        params = (Param("factor", number, 2.0, "the factor", "number"),)

        def apply(self, x, params):
            return x * self.factor

    class NotATransform:
        pass

    def a_function(x):
        return x

    class Rot90Again(Transform):
        name = "rot90"
        summary = "clashes with the built-in"

        def apply(self, x, params):
            return x
    '''
)

MODULE_PLUGIN = textwrap.dedent(
    '''
    from transforms_zoo import Transform, register

    @register
    class Square(Transform):
        name = "square_plugin"
        summary = "square"

        def apply(self, x, params):
            return x * x
    '''
)


@pytest.fixture
def plugin_env(tmp_path, monkeypatch):
    """A function that installs entry points ``{name: value}`` into a fresh sys.path folder."""
    site = tmp_path / "site"
    pkg = site / "eqa_demo"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "transforms.py").write_text(PLUGIN_CODE)
    (pkg / "module_plugin.py").write_text(MODULE_PLUGIN)
    (pkg / "broken.py").write_text("import not_a_real_module_xyz\n")
    (pkg / "exits.py").write_text("raise SystemExit(3)\n")
    (pkg / "lookup.py").write_text(MODULE_PLUGIN.replace("square_plugin", "lookup_plugin")
                                   + "\nimport transforms_zoo\nSEEN = transforms_zoo.names()\n")
    (pkg / "half.py").write_text(MODULE_PLUGIN.replace("square_plugin", "half_plugin") + "\nraise RuntimeError('boom')\n")

    def install(entries: dict[str, str], dist: str = "eqa-demo-plugin") -> None:
        info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        lines = ["[eqaudit.transforms]"] + [f"{k} = {v}" for k, v in entries.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        monkeypatch.syspath_prepend(str(site))
        base._reset_plugins()

    base._reset_plugins()
    yield install
    base._reset_plugins()
    for name in [m for m in sys.modules if m == "eqa_demo" or m.startswith("eqa_demo.")]:
        del sys.modules[name]


def test_a_class_entry_point_adds_a_transform(plugin_env):
    plugin_env({"negate": "eqa_demo.transforms:Negate", "gain2": "eqa_demo.transforms:Gain2"})
    assert {"negate", "gain2"} <= set(transforms_zoo.names())
    t = transforms_zoo.build({"gain2": {"factor": 3}})
    assert torch.equal(t(torch.ones(2, 2)), torch.full((2, 2), 3.0))
    origin = base.plugin_origin("negate")
    assert origin is not None and "negate = eqa_demo.transforms:Negate" in origin and "eqa-demo-plugin 0.1" in origin
    assert base.plugin_origin("rot90") is None and base.plugin_failures() == {}


def test_eqaudit_transforms_lists_and_documents_the_plugin(plugin_env):
    plugin_env({"negate": "eqa_demo.transforms:Negate"})
    r = runner.invoke(app, ["transforms"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "negate" in r.stdout and "multiply by -1" in r.stdout
    r = runner.invoke(app, ["transforms", "negate"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "Z2 action" in r.stdout


def test_a_plugin_transform_in_a_spec(plugin_env, project):
    plugin_env({"negate": "eqa_demo.transforms:Negate"})
    spec = write_spec(project, """
    model: {factory: models.py:PixelSum}
    input: {shape: [1, 4, 4], bounds: [-1, 1]}
    samples: 64
    checks:
      - {name: odd, both: negate, threshold: 1.0e-5}
    """)
    r = runner.invoke(app, ["measure", "--spec", str(spec), "--json", "-"])
    assert r.exit_code == 0, r.output


def test_a_module_entry_point_registers_on_import(plugin_env):
    plugin_env({"squares": "eqa_demo.module_plugin"})
    assert "eqa_demo.module_plugin" not in sys.modules
    assert "square_plugin" in transforms_zoo.names()
    assert "squares = eqa_demo.module_plugin" in base.plugin_origin("square_plugin")


def test_a_plugin_may_look_names_up_while_it_loads(plugin_env):
    plugin_env({"lookup": "eqa_demo.lookup"})
    assert "lookup_plugin" in transforms_zoo.names()
    seen = sys.modules["eqa_demo.lookup"].SEEN
    assert "rot90" in seen  # the built-ins were there; no recursion, no deadlock


def test_plugins_load_lazily_and_once(plugin_env, monkeypatch):
    import importlib.metadata as md

    calls = []
    real = md.entry_points

    def counting(**kw):
        calls.append(kw)
        return real(**kw)

    monkeypatch.setattr(md, "entry_points", counting)
    plugin_env({"negate": "eqa_demo.transforms:Negate"})
    import transforms_zoo as again  # noqa: F401  (importing the package loads nothing)

    assert calls == [] and "eqa_demo.transforms" not in sys.modules
    transforms_zoo.get("rot90")
    transforms_zoo.names()
    transforms_zoo.build("negate")
    assert calls == [{"group": "eqaudit.transforms"}]
    assert "eqa_demo.transforms" in sys.modules


@pytest.mark.parametrize(
    "value,words",
    [
        ("eqa_demo.broken", "ModuleNotFoundError"),
        ("eqa_demo.transforms:NotATransform", "got eqa_demo.transforms.NotATransform"),
        ("eqa_demo.transforms:a_function", "expected a transforms_zoo.Transform subclass"),
        ("eqa_demo.transforms:Missing", "AttributeError"),
        ("eqa_demo.exits", "SystemExit"),
        ("eqa_demo.transforms:Rot90Again", "already registered"),
    ],
)
def test_a_broken_plugin_does_not_break_the_registry(plugin_env, value, words):
    plugin_env({"broken_thing": value, "negate": "eqa_demo.transforms:Negate"})
    names = transforms_zoo.names()  # no exception
    assert "negate" in names and "rot90" in names and "broken_thing" not in names
    failures = base.plugin_failures()
    assert list(failures) == ["broken_thing"] and f"broken_thing = {value}" in failures["broken_thing"]
    with pytest.raises(TransformError) as info:
        transforms_zoo.get("broken_thing")
    msg = str(info.value)
    assert "broken_thing" in msg and "failed to load" in msg and "eqa-demo-plugin" in msg
    assert words in failures["broken_thing"] and words in msg
    # The built-in survives a clashing plugin.
    assert transforms_zoo.get("rot90").__module__ == "transforms_zoo.image"


def test_a_half_imported_plugin_contributes_nothing(plugin_env):
    plugin_env({"half": "eqa_demo.half"})
    assert "half_plugin" not in transforms_zoo.names()
    assert "RuntimeError: boom" in base.plugin_failures()["half"]


def test_the_cli_survives_a_broken_plugin(plugin_env, project):
    plugin_env({"broken_thing": "eqa_demo.broken"})
    r = runner.invoke(app, ["transforms"])
    assert r.exit_code == 0 and "rot90" in r.stdout
    spec = write_spec(project, """
    model: {factory: models.py:PixelSum}
    input: {shape: [1, 4, 4]}
    checks:
      - {input: broken_thing}
    """)
    r = runner.invoke(app, ["validate", str(spec)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1
    assert "checks[0].input" in line and "broken_thing = eqa_demo.broken" in line and "failed to load" in line
    # An unknown name mentions that a plugin failed to load.
    spec.write_text(spec.read_text().replace("broken_thing", "no_such_thing"))
    r = runner.invoke(app, ["validate", str(spec)])
    assert r.exit_code == 2 and "plugins that failed to load: broken_thing" in r.stderr


def test_readme_example_plugin_works(plugin_env, tmp_path):
    """The worked example of the README's 'Transform plugins' section, run as written."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Transform plugins", 1)[1].split("\n## ", 1)[0]
    blocks = section.split("```")
    code = next(b for b in blocks if b.startswith("python\n") and "class " in b)[len("python\n"):]
    toml = next(b for b in blocks if b.startswith("toml\n"))
    entry = next(line for line in toml.splitlines() if "=" in line and ":" in line and "[" not in line)
    name, value = (s.strip().strip('"') for s in entry.split("=", 1))
    module, _, _ = value.partition(":")
    site = tmp_path / "site"
    path = site / Path(*module.split("."))
    path.parent.mkdir(parents=True, exist_ok=True)
    for parent in path.relative_to(site).parents:
        if str(parent) != ".":
            (site / parent / "__init__.py").touch()
    path.with_suffix(".py").write_text(code)
    plugin_env({name: value})
    cls = transforms_zoo.get(name)
    t = transforms_zoo.build(name)
    x = torch.rand(4, 3, 8, 8)
    from transforms_zoo import SampleRNG

    y = t.apply(x, t.sample(SampleRNG.for_range(0, 0, 4)))
    assert y.shape == x.shape and cls.name == name
    for mod in [m for m in sys.modules if m.split(".")[0] == module.split(".")[0]]:
        del sys.modules[mod]
