"""ONNX graphs as checkpoints (``model.checkpoint: model.onnx``): the audit of the exported graph
run by onnxruntime equals the audit of the PyTorch model, with a dynamic or a fixed batch
dimension; a corrupt graph, a missing onnxruntime, ``mode: lie`` and a graph that does not fit the
input are each one error line and exit 2."""

import json
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from eqaudit.cli import app  # noqa: E402
from eqaudit.io.checkpoint import load_model  # noqa: E402
from eqaudit.io.onnx_model import OnnxModule  # noqa: E402

runner = CliRunner()

MODELS = '''
import torch
from torch import nn


def Net():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 3))
'''

SPEC = """
model:
  factory: models.py:Net
  checkpoint: {checkpoint}
input:
  shape: [1, 8, 8]
samples: 300
seed: 3
checks:
  - name: rot90
    input: rot90
    threshold: 0.5
  - name: hflip
    input: hflip
    distance: relative_l2
    threshold: 0.001
  - name: shift
    input: {{shift: {{dx: [-1, 1]}}}}
    threshold: 0.5
"""


def export(model: nn.Module, path: Path, dynamic: bool = True, batch: int = 2) -> Path:
    """``model`` exported with the TorchScript-based exporter (its deprecation warning silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(batch, 1, 8, 8),), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "batch"}} if dynamic else None)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A factory, its weights (torch.save state dict) and their ONNX exports: dynamic batch and batch 7."""
    root = tmp_path_factory.mktemp("onnx")
    (root / "models.py").write_text(MODELS)
    sys.path.insert(0, str(root))
    try:
        import models  # the test's own factory, as the spec names it
    finally:
        sys.path.remove(str(root))
    sys.modules.pop("models", None)
    torch.manual_seed(0)
    model = models.Net().eval()
    torch.save(model.state_dict(), root / "weights.pt")
    export(model, root / "dynamic.onnx")
    export(model, root / "fixed7.onnx", dynamic=False, batch=7)
    for name in ("weights.pt", "dynamic.onnx", "fixed7.onnx"):
        (root / f"{name}.yaml").write_text(SPEC.format(checkpoint=name))
    return root


def audit_json(folder: Path, spec: str, tmp_path: Path, *extra: str) -> tuple[int, dict]:
    out = tmp_path / f"{spec}.json"
    result = runner.invoke(app, ["measure", "--spec", str(folder / spec), "--json", str(out), "-q", *extra])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(out.read_text())


@pytest.mark.parametrize("graph", ["dynamic.onnx", "fixed7.onnx"])
def test_the_onnx_audit_equals_the_torch_audit(folder, tmp_path, graph):
    code, reference = audit_json(folder, "weights.pt.yaml", tmp_path)
    onnx_code, report = audit_json(folder, f"{graph}.yaml", tmp_path, "--batch-size", "64")
    assert onnx_code == code
    for ours, theirs in zip(report["checks"], reference["checks"], strict=True):
        assert ours["name"] == theirs["name"] and ours["passed"] == theirs["passed"]
        assert ours["mean"] == pytest.approx(theirs["mean"], rel=1e-4, abs=1e-5)
    assert reference["checks"][0]["mean"] > 1e-3  # the checks measure something: not 0 = 0


def test_a_fixed_batch_graph_is_fed_in_pieces_of_its_size(folder):
    torch.manual_seed(1)
    reference = load_model(folder / "weights.pt", factory="models.py:Net", base_dir=folder)
    graph = load_model(folder / "fixed7.onnx", base_dir=folder)
    assert isinstance(graph, OnnxModule) and graph.fixed_batch == 7
    x = torch.rand(16, 1, 8, 8)  # 7 + 7 + 2 (padded to 7)
    y = graph(x)
    assert y.dtype == torch.float32 and y.shape == (16, 3)
    torch.testing.assert_close(y, reference(x).detach(), rtol=1e-5, atol=1e-5)


def test_validate_and_sweep_accept_an_onnx_graph(folder, tmp_path):
    assert runner.invoke(app, ["validate", str(folder / "dynamic.onnx.yaml")]).exit_code == 0
    result = runner.invoke(app, ["sweep", "--spec", str(folder / "dynamic.onnx.yaml"), "--check", "rot90",
                                 "--param", "k", "--values", "1,2", "--samples", "64", "-q"])
    assert result.exit_code == 0, result.output


def test_a_corrupt_onnx_file_is_exit_2_at_the_checkpoint(folder, tmp_path):
    (tmp_path / "models.py").write_text(MODELS)
    (tmp_path / "broken.onnx").write_bytes((folder / "dynamic.onnx").read_bytes()[:100])
    (tmp_path / "spec.yaml").write_text(SPEC.format(checkpoint="broken.onnx"))
    result = runner.invoke(app, ["measure", "--spec", str(tmp_path / "spec.yaml")])
    assert result.exit_code == 2
    assert "model.checkpoint" in result.output and "not a valid ONNX graph" in result.output
    assert "Traceback" not in result.output


def test_a_missing_onnxruntime_names_the_extra(folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    result = runner.invoke(app, ["measure", "--spec", str(folder / "dynamic.onnx.yaml")])
    assert result.exit_code == 2
    assert "needs onnxruntime" in result.output and "eqaudit[onnx]" in result.output


def test_the_lie_mode_on_a_graph_is_exit_2_saying_why(folder, tmp_path):
    spec = tmp_path / "lie.yaml"
    spec.write_text(f"model: {{checkpoint: {folder / 'dynamic.onnx'}}}\ninput: {{shape: [1, 8, 8]}}\n"
                    "samples: 32\nchecks:\n  - {input: {rotate: {degrees: 10}}, mode: lie, distance: l2, threshold: 1}\n")
    result = runner.invoke(app, ["measure", "--spec", str(spec)])
    assert result.exit_code == 2 and "no derivatives" in result.output and "mode: sample" in result.output


def test_a_graph_that_does_not_fit_the_input_shape_is_exit_2(folder, tmp_path):
    spec = tmp_path / "shape.yaml"
    spec.write_text(f"model: {{checkpoint: {folder / 'dynamic.onnx'}}}\ninput: {{shape: [3, 8, 8]}}\n"
                    "samples: 32\nchecks:\n  - {input: rot90, threshold: 1}\n")
    result = runner.invoke(app, ["measure", "--spec", str(spec)])
    assert result.exit_code == 2 and "onnxruntime failed" in result.output and "input.shape" in result.output


def test_finetune_refuses_an_onnx_graph_before_writing_anything(folder, tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.rand(8, 1, 8, 8), "y": torch.randint(0, 3, (8,))}, str(tmp_path / "d.safetensors"))
    config = tmp_path / "ft.yaml"
    config.write_text(f"model: {{checkpoint: {folder / 'dynamic.onnx'}}}\ninput: {{shape: [1, 8, 8]}}\nsamples: 16\n"
                      "checks:\n  - {input: rot90, threshold: 1}\ndata: {path: d.safetensors, inputs: x, targets: y}\n"
                      "steps: 2\noutput: out.safetensors\n")
    result = runner.invoke(app, ["finetune", str(config)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "model.checkpoint" in result.output and "cannot be fine-tuned" in result.output
    assert not (tmp_path / "out.safetensors").exists()
    validated = runner.invoke(app, ["validate", str(config)])  # what validate accepts, finetune runs
    assert validated.exit_code == 2 and "cannot be fine-tuned" in validated.output
