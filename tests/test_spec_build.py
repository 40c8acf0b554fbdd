"""What a spec reads and builds: ``Spec.input_files`` (every file an audit reads, by key) and
``Spec.build_model`` (a factory-only model seeded from the spec's seed)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from eqaudit.engine.run import audit
from eqaudit.spec import load_spec

from conftest import write_spec

CODE = """
import torch

def shift_rows(x):
    return torch.roll(x, 1, dims=-1)

def my_distance(a, b):
    return (a - b).flatten(1).abs().sum(1)
"""


def test_input_files_name_every_file_by_key(project):
    (project / "code.py").write_text(CODE)
    (project / "pkg").mkdir()
    (project / "pkg" / "__init__.py").write_text("")
    (project / "pkg" / "nets.py").write_text("from models import *\n")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(4, 1, 8, 8)}, str(project / "points.safetensors"))
    save_file(torch.nn.Linear(64, 4).state_dict(), str(project / "w.safetensors"))
    path = write_spec(project, """
        model: {factory: "pkg.nets:Linear", kwargs: {n: 64}, checkpoint: w.safetensors}
        input: {shape: [1, 8, 8], data: "points.safetensors:x"}
        distance: "code.py:my_distance"
        checks:
          - {input: "code.py:shift_rows"}
          - {name: b, input: [hflip, "code.py:shift_rows"], output: "code.py:shift_rows", distance: lp:3}
          - {name: c, both: rot90, distance: "code.py:my_distance"}
    """)
    sys.modules.pop("pkg.nets", None)
    sys.modules.pop("pkg", None)
    files = load_spec(path).input_files()
    code = (project / "code.py").resolve()
    assert files == {
        "spec": path.resolve(),
        "model.checkpoint": (project / "w.safetensors").resolve(),
        "input.data": (project / "points.safetensors").resolve(),
        "model.factory": (project / "pkg" / "nets.py").resolve(),
        "distance": code,
        "checks[0].input": code,
        "checks[1].input[1]": code,
        "checks[1].output": code,
        "checks[2].distance": code,
    }


def test_input_files_of_a_factory_file_and_no_checkpoint(project):
    path = write_spec(project, """
        model: {factory: "models.py:PixelReader"}
        input: {shape: [1, 8, 8]}
        checks: [{input: hflip}]
    """)
    assert load_spec(path).input_files() == {"spec": path.resolve(),
                                             "model.factory": (project / "models.py").resolve()}


def test_input_files_name_an_installed_module_by_its_file(project):
    path = write_spec(project, """
        model: {factory: "torch.nn:Identity"}
        input: {shape: [4]}
        checks: [{input: hflip}]
    """)
    files = load_spec(path).input_files()
    assert files["model.factory"] == Path(torch.nn.__file__).resolve()
    assert set(files) == {"spec", "model.factory"}


SEEDED = """
model: {factory: "models.py:Linear", kwargs: {n: 64, out: 4}}
input: {shape: [1, 8, 8]}
samples: 64
seed: 11
checks: [{input: rot90}]
"""


def test_a_factory_only_model_is_seeded_by_the_spec(project):
    """Two audits of a factory-only spec gave different numbers (0.01282, then 0.01745)."""
    path = write_spec(project, SEEDED)
    first, second = audit(None, path), audit(None, path)
    assert first.checks[0].mean == second.checks[0].mean
    assert first.checks[0].mean > 0


def test_factory_weights_are_those_finetune_starts_from(project):
    """``build_model`` builds the weights that ``manual_seed(seed)`` + the factory build (what the
    fine-tune run starts from), and leaves the caller's random state as it was."""
    spec = load_spec(write_spec(project, SEEDED))
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    built = spec.build_model()
    assert torch.equal(torch.random.get_rng_state(), state)
    with torch.random.fork_rng():
        torch.manual_seed(11)
        reference = torch.nn.Linear(64, 4)
    assert torch.equal(built.fc.weight, reference.weight)
    assert torch.equal(spec.replace(seed=12).build_model().fc.weight, spec.replace(seed=12).build_model().fc.weight)
    assert not torch.equal(spec.replace(seed=12).build_model().fc.weight, built.fc.weight)


def test_measure_and_assert_equivariant_build_the_same_seeded_model(project, tmp_path):
    """The command line and the pytest helper build a factory-only model as ``audit()`` does."""
    import json

    from typer.testing import CliRunner

    from eqaudit.cli import app
    from eqaudit.testing import assert_equivariant

    path = write_spec(project, SEEDED)
    means = []
    for name in ("a.json", "b.json"):
        out = tmp_path / name
        result = CliRunner().invoke(app, ["measure", "--spec", str(path), "--json", str(out), "--quiet"])
        assert result.exit_code in (0, 1), result.output
        means.append(json.loads(out.read_text())["checks"][0]["mean"])
    assert means[0] == means[1] == audit(None, path).checks[0].mean
    report = assert_equivariant(None, str(path), atol=1e9)
    assert report.checks[0].mean == means[0]


def test_input_files_skip_references_that_name_no_file(project):
    """A factory module that cannot be found is the model builder's error, not input_files'."""
    path = write_spec(project, """
        model: {factory: "no_such_module_here:Net"}
        input: {shape: [4]}
        checks: [{input: {gaussian_noise: {std: 0.1}}}]
    """)
    assert load_spec(path).input_files() == {"spec": path.resolve()}


def test_a_factory_file_under_the_home_folder_is_found_and_imported(project, monkeypatch):
    """``~/models.py:Name`` names the same file for the input-file list and for the import (the
    import did not expand ``~``)."""
    monkeypatch.setenv("HOME", str(project))
    path = write_spec(project, """
        model: {factory: "~/models.py:PixelReader"}
        input: {shape: [1, 8, 8]}
        samples: 64
        checks: [{input: hflip, threshold: 1}]
    """)
    spec = load_spec(path)
    assert spec.input_files()["model.factory"] == (project / "models.py").resolve()
    assert audit(None, spec).checks[0].n == 64
