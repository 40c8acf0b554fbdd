"""The user documentation in docs/ stays complete: every CLI option, every JSON report field, every
spec and fine-tune key and every zoo transform is documented, and every relative link resolves.

The lists come from the code (the Typer app, a real report written through the CLI, the parser's
key tables, the transform registry), so adding an option, field or key without documenting it
fails here.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = ("index.md", "spec.md", "finetune.md", "cli.md", "reports.md", "reliability.md", "tutorial.md")


def read(page: str) -> str:
    return (DOCS / page).read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    """The text under the first heading whose title is ``heading`` (any level), up to the next
    heading of the same or a higher level."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"(#+) (.*)$", line)
        if m and m.group(2).strip() == heading:
            level = len(m.group(1))
            end = next((j for j in range(i + 1, len(lines))
                        if (h := re.match(r"(#+) ", lines[j])) and len(h.group(1)) <= level), len(lines))
            return "\n".join(lines[i + 1 : end])
    raise AssertionError(f"no heading {heading!r}")


def mentions(text: str, name: str) -> bool:
    """Whether ``name`` appears as code: `` `name` ``, or the first word of a code span (`` `--seed S` ``)."""
    return re.search("`" + re.escape(name) + r"[`\s,]", text) is not None


# -- the command line ---------------------------------------------------------------------------
def commands() -> dict[str, Any]:
    """Every command of the Typer app by its full name (``measure``, or ``group sub`` for groups)."""
    from eqaudit.cli import app

    found: dict[str, Any] = {}

    def walk(cmd: Any, prefix: str) -> None:
        if hasattr(cmd, "commands"):  # a group (Typer vendors its own Click: duck-typed)
            for name, sub in cmd.commands.items():
                walk(sub, f"{prefix} {name}".strip())
        else:
            found[prefix] = cmd

    walk(typer.main.get_command(app), "")
    return found


def test_cli_commands_are_found() -> None:
    assert {"measure", "validate", "transforms", "sweep", "finetune"} <= set(commands())


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_cli_option_is_documented(name: str) -> None:
    """Each option (every spelling: ``--quiet`` and ``-q``) and argument of each command is in that
    command's section of docs/cli.md, and a non-trivial default is on the option's row."""
    text = section(read("cli.md"), f"`eqaudit {name}`")
    for param in commands()[name].params:
        if param.param_type_name == "argument":
            assert mentions(text, param.name.upper()), f"eqaudit {name}: argument {param.name.upper()} undocumented"
            continue
        for opt in [*param.opts, *param.secondary_opts]:
            assert mentions(text, opt), f"eqaudit {name}: option {opt} is not documented in docs/cli.md"
        if param.default not in (None, False, True, ...) and not callable(param.default):
            row = next(line for line in text.splitlines() if line.startswith("|") and mentions(line, param.opts[0]))
            default_cell = row.split("|")[2]  # | option | default | meaning |
            assert f"`{param.default}`" in default_cell, f"eqaudit {name} {param.opts[0]}: default {param.default!r}"


@pytest.mark.parametrize("name", sorted(commands()))
def test_no_documented_option_is_stale(name: str) -> None:
    """Each option in the first column of a command's option table exists (a renamed or removed
    option must leave docs/cli.md too)."""
    text = section(read("cli.md"), f"`eqaudit {name}`")
    real = {opt for param in commands()[name].params for opt in [*param.opts, *param.secondary_opts]}
    rows = [line.split("|")[1] for line in text.splitlines() if line.startswith("| `")]
    assert rows, f"no option table for eqaudit {name}"
    for cell in rows:
        for opt in re.findall(r"`(-[\w-]+)", cell):
            assert opt in real, f"docs/cli.md documents {opt} for eqaudit {name}, which has no such option"


def test_every_pytest_plugin_option_is_documented() -> None:
    from eqaudit import pytest_plugin
    options: list[str] = []
    group = SimpleNamespace(addoption=lambda *names, **_: options.extend(names))
    pytest_plugin.pytest_addoption(SimpleNamespace(getgroup=lambda *_: group))  # type: ignore[arg-type]
    assert options
    text = section(read("cli.md"), "The pytest plugin")
    for opt in options:
        assert mentions(text, opt), f"pytest option {opt} undocumented"


# -- reports ------------------------------------------------------------------------------------
MODEL_PY = textwrap.dedent(
    """
    import torch


    class TinyCNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular")
            self.head = torch.nn.Conv2d(2, 1, 1)

        def forward(self, x):
            return self.head(torch.tanh(self.conv(x)))


    def two_channels(x):
        return torch.cat([x, x], dim=1)  # the model takes one channel: its check cannot run
    """
)

SPEC = {
    "model": {"factory": "tiny_model.py:TinyCNN"},
    "input": {"shape": [1, 6, 6], "bounds": [0, 1]},
    "samples": 64,
    "layers": ["conv", "head"],
    "checks": [
        {"name": "rot", "both": "rot90", "threshold": 10.0},
        {"name": "c4", "group": "C4", "threshold": 10.0},
    ],
}
BROKEN_CHECK = {"name": "broken", "input": "tiny_model.py:two_channels"}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real JSON report, written by ``eqaudit measure --json`` for a tiny CNN with a group check,
    per-layer attribution and a check that cannot run (so that ``elements``, ``layers`` and
    ``error`` are filled in)."""
    from eqaudit.cli import app

    folder = tmp_path_factory.mktemp("docs_report")
    (folder / "tiny_model.py").write_text(MODEL_PY, encoding="utf-8")
    spec = {**SPEC, "checks": [*SPEC["checks"], BROKEN_CHECK]}
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    out = folder / "report.json"
    result = CliRunner().invoke(app, ["measure", "--spec", str(folder / "spec.yaml"), "--json", str(out), "-q",
                                      "--device", "cpu"])
    assert result.exit_code == 2, result.output  # the broken check's error row
    return json.loads(out.read_text(encoding="utf-8"))


def test_every_report_field_is_documented(report: dict[str, Any]) -> None:
    text = read("reports.md")
    top = section(text, "Top-level fields")
    for field in report:
        assert mentions(top, field), f"report field {field!r} missing from reports.md 'Top-level fields'"
    per_check = section(text, "Per-check fields")
    assert "error" in report["checks"][-1], "the broken check should carry its error"
    for check in report["checks"]:
        for field in check:
            assert mentions(per_check, field), f"check field {field!r} missing from reports.md 'Per-check fields'"


def test_group_element_and_layer_fields_are_documented(report: dict[str, Any]) -> None:
    text = read("reports.md")
    group = next(c for c in report["checks"] if c["elements"])
    elements = section(text, "`elements` (group checks)")
    for field in group["elements"][0]:
        assert mentions(elements, field), f"element field {field!r} undocumented"
    layered = next(c for c in report["checks"] if c["layers"])
    layers = section(text, "`layers` (per-layer attribution)")
    for row in layered["layers"]:
        for field in row:
            assert mentions(layers, field), f"layer field {field!r} undocumented"


def test_every_sweep_field_is_documented(tmp_path: Path) -> None:
    from eqaudit.cli import app

    (tmp_path / "tiny_model.py").write_text(MODEL_PY, encoding="utf-8")
    spec = {**SPEC, "layers": None, "checks": [{"name": "sh", "input": {"shift": {"dx": 1}}}]}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({k: v for k, v in spec.items() if v}), encoding="utf-8")
    out = tmp_path / "sweep.json"
    result = CliRunner().invoke(app, ["sweep", "--spec", str(tmp_path / "spec.yaml"), "--check", "sh", "--param", "dx",
                                      "--values", "0,1", "--json", str(out), "-q", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    curve = json.loads(out.read_text(encoding="utf-8"))
    text = section(read("reports.md"), "Sweep JSON")
    for field in [*curve, *curve["points"][0]]:
        assert mentions(text, field), f"sweep field {field!r} missing from reports.md 'Sweep JSON'"


FINETUNE = {
    "model": {"factory": "tiny_model.py:TinyCNN"},
    "input": {"shape": [1, 6, 6]},
    "samples": 64,
    "checks": [{"name": "rot", "both": "rot90", "threshold": 10.0, "epsilon": 0.0, "weight": 0.1}],
    "data": {"path": "train.safetensors", "inputs": "x", "targets": "y", "val_inputs": "x", "val_targets": "y"},
    "task_loss": "mse",
    "steps": 4,
    "batch_size": 8,
    "log_every": 2,
    "output": {"checkpoint": "tuned.safetensors"},
    "dynamics": {"directions": 2, "iterations": 3, "examples": 8},
}


@pytest.fixture(scope="module")
def finetune_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real fine-tune report (``eqaudit finetune --json``), with the learning curve and dynamics."""
    import torch
    from safetensors.torch import save_file

    from eqaudit.cli import app

    folder = tmp_path_factory.mktemp("docs_finetune")
    (folder / "tiny_model.py").write_text(MODEL_PY, encoding="utf-8")
    x = torch.rand(16, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    save_file({"x": x, "y": x.clone()}, str(folder / "train.safetensors"))
    (folder / "ft.yaml").write_text(yaml.safe_dump(FINETUNE), encoding="utf-8")
    out = folder / "ft.json"
    result = CliRunner().invoke(app, ["finetune", str(folder / "ft.yaml"), "--json", str(out), "-q",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text(encoding="utf-8"))


def test_every_finetune_report_field_is_documented(finetune_report: dict[str, Any]) -> None:
    text = section(read("reports.md"), "Fine-tune JSON report")
    nested = {"optimizer": finetune_report["optimizer"], "regularizer": finetune_report["regularizer"],
              "before": finetune_report["before"], "metrics": finetune_report["before"]["metrics"],
              "curve": finetune_report["curve"][0], "dynamics": finetune_report["dynamics"],
              "sharpness": finetune_report["dynamics"]["sharpness"], "hessian": finetune_report["dynamics"]["hessian"]}
    for field in [*finetune_report, *(key for block in nested.values() for key in block)]:
        assert mentions(text, field) or re.search(rf"[{{,] ?{re.escape(field)}[,}}]", text), (
            f"fine-tune report field {field!r} missing from reports.md 'Fine-tune JSON report'")


# -- spec and fine-tune keys --------------------------------------------------------------------
def spec_key_paths() -> set[str]:
    """Every key the spec parser accepts, as documented paths (``model.factory``, ``checks[].mask``),
    from the parser's own key tables."""
    from eqaudit import spec

    paths = set(spec.SPEC_KEYS)
    paths |= {f"model.{k}" for k in spec.MODEL_KEYS}
    paths |= {f"input.{k}" for k in spec.INPUT_KEYS}
    paths |= {f"checks[].{k}" for k in spec.CHECK_KEYS}
    return paths


def finetune_key_paths() -> set[str]:
    """Every key the fine-tune config parser accepts beyond the spec's, as documented paths."""
    from eqaudit import finetune as ft

    paths = set(ft.FINETUNE_KEYS)
    for block, keys in (("data", ft.DATA_KEYS), ("optimizer", ft.OPTIMIZER_KEYS),
                        ("regularizer", ft.REGULARIZER_KEYS), ("output", ft.OUTPUT_KEYS),
                        ("dynamics", ft.DYNAMICS_KEYS)):
        paths |= {f"{block}.{k}" for k in keys}
    return paths


def sample_key_paths(data: Any, prefix: str = "") -> set[str]:
    """The key paths a YAML document uses (list items as ``[]``), stopping at transform parameters
    (``checks[].input`` is documented as a transform, its inner keys by the zoo)."""
    paths: set[str] = set()
    if isinstance(data, dict):
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            paths.add(path)
            if path not in ("model.kwargs", "data.kwargs") and not re.fullmatch(r"checks\[\]\.\w+", path):
                paths |= sample_key_paths(value, path)
    elif isinstance(data, list) and prefix == "checks":
        for item in data:
            paths |= sample_key_paths(item, prefix + "[]")
    return paths


def bundled_configs() -> list[Path]:
    return sorted((ROOT / "sample_configs").glob("*.yaml"))


def test_the_key_tables_cover_the_bundled_samples() -> None:
    """The parser's tables are the list the docs are checked against: every key a bundled sample
    uses must be in them (else the tables moved or lost a key, and this test would miss it)."""
    known = spec_key_paths() | finetune_key_paths()
    for path in bundled_configs():
        used = sample_key_paths(yaml.safe_load(path.read_text(encoding="utf-8")))
        assert used <= known, f"{path.name}: {sorted(used - known)} not in the parser's key tables"


def reference_section(page: str, path: str) -> str:
    """The section of ``page`` that documents key ``path``: its block's (``model``, ``checks``,
    ``data``...), or the page's top-level key table."""
    block = path.split(".")[0].removesuffix("[]")
    text = read(page)
    if "." in path:
        return section(text, f"`{block}`")
    return section(text, "Top-level keys" if page == "spec.md" else "Training keys")


def test_every_spec_key_is_documented() -> None:
    for path in sorted(spec_key_paths()):
        text = reference_section("spec.md", path)
        assert mentions(text, path), f"spec key {path} is not documented in its section of docs/spec.md"


def test_every_finetune_key_is_documented() -> None:
    for path in sorted(finetune_key_paths()):
        text = reference_section("finetune.md", path)
        assert mentions(text, path), f"fine-tune key {path} is not documented in its section of docs/finetune.md"


@pytest.mark.parametrize("page", ["spec.md", "finetune.md"])
def test_no_documented_key_is_stale(page: str) -> None:
    """Every key path a reference page's tables document (first column) is accepted by the parser."""
    known = spec_key_paths() | finetune_key_paths()
    blocks = "|".join(sorted({path.split(".")[0].removesuffix("[]") for path in known if "." in path}))
    for line in read(page).splitlines():
        if line.startswith("| `"):
            for path in re.findall(rf"`((?:{blocks})(?:\[\])?\.\w+)`", line.split("|")[1]):
                assert path in known, f"docs/{page} documents {path}, which the parser does not accept"


def test_every_zoo_transform_and_parameter_is_documented() -> None:
    import transforms_zoo

    zoo = section(read("spec.md"), "The transform zoo")
    for name in transforms_zoo.names():
        cls = transforms_zoo.get(name)
        if cls.__module__.split(".")[0] != "transforms_zoo":
            continue  # an installed plugin, documented by its own package
        assert mentions(zoo, name), f"transform {name} missing from spec.md 'The transform zoo'"
        row = next(line for line in zoo.splitlines() if line.startswith(f"| `{name}`"))
        for param in cls.params:
            assert mentions(row, param.name), f"transform {name}: parameter {param.name} undocumented"


def test_every_distance_is_documented() -> None:
    from eqaudit.engine.distances import DISTANCE_NAMES

    text = section(read("spec.md"), "Distances")
    for name in DISTANCE_NAMES:
        assert mentions(text, name), f"distance {name} undocumented"


# -- links --------------------------------------------------------------------------------------
def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.*)$", text, flags=re.M)}


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return [m.group(1) for m in re.finditer(r"\]\(([^)\s]+)\)", text)]


def test_every_page_exists() -> None:
    for page in PAGES:
        assert (DOCS / page).is_file(), f"docs/{page} is missing"


@pytest.mark.parametrize("page", [ROOT / "README.md", *sorted(DOCS.glob("*.md"))], ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    for target in links(page):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        assert dest.exists(), f"{page.name}: link to {target} points to no file"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest), f"{page.name}: link to {target}: no heading with that anchor"


def test_the_readme_points_to_the_docs_not_to_spec_md() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "SPEC.md" not in readme
    assert "docs/index.md" in readme
