"""torchrun with 2 CPU processes (gloo) gives exactly the single-process report."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_two_processes_give_the_single_process_report(tmp_path):
    spec = ROOT / "sample_configs" / "digits.yaml"
    common = ["measure", "--spec", str(spec), "--device", "cpu", "--batch-size", "192", "--samples", "1000", "-q"]
    single = tmp_path / "single.json"
    split = tmp_path / "split.json"
    subprocess.run([sys.executable, "-m", "eqaudit", *common, "--json", str(single)], check=True, cwd=tmp_path)
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "eqaudit", *common, "--json", str(split)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    a, b = json.loads(single.read_text()), json.loads(split.read_text())
    assert a["checks"] == b["checks"]
    assert "samples split across 2 processes" in b["notes"]


FINETUNE = """
model:
  factory: sample_models.digits:SmallCNN
  kwargs: {{channels: 4}}
input:
  data: {data}:val_images
samples: 128
checks:
  - name: rot90
    input: rot90
    weight: 0.1
    threshold: 100
data:
  path: {data}
  inputs: train_images
  targets: train_labels
task_loss: cross_entropy
optimizer: {{name: sgd, lr: 0.05}}
steps: 12
batch_size: 32
regularizer: {{points: data}}
output:
  checkpoint: {out}
checkpoint_every: 0
"""


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_data_parallel_finetune_matches_one_process(tmp_path):
    import shutil

    from safetensors.torch import load_file

    shutil.copytree(ROOT / "sample_configs" / "sample_models", tmp_path / "sample_models")
    data = ROOT / "sample_configs" / "digits.safetensors"
    for name in ("one", "two"):
        (tmp_path / f"{name}.yaml").write_text(FINETUNE.format(data=data, out=f"{name}.safetensors"))
    base = [sys.executable, "-m"]
    subprocess.run([*base, "eqaudit", "finetune", "one.yaml", "-q", "--device", "cpu"], check=True, cwd=tmp_path)
    run = subprocess.run(
        [*base, "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "eqaudit", "finetune", "two.yaml", "-q", "--device", "cpu"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    one, two = load_file(str(tmp_path / "one.safetensors")), load_file(str(tmp_path / "two.safetensors"))
    # Each process takes half of every batch; averaged gradients equal the full batch's up to rounding.
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-6), k
    report = json.loads((tmp_path / "two.report.json").read_text())
    assert report["processes"] == 2


DISTANCE = '''
import torch


def picky(a, b):
    """l2, except on large outputs, where it fails: only some chunks see those."""
    if a.abs().max() > 10:
        raise ValueError("outputs too large for this distance")
    return torch.linalg.vector_norm((a - b).flatten(1), dim=1)
'''


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_a_check_failing_in_one_process_is_an_error_row_in_every_process(tmp_path):
    from safetensors.torch import save_file

    rows = torch.rand(384, 1, 4, 4)
    rows[192:] *= 100  # the second chunk (the second process's) holds the large samples
    save_file({"x": rows}, str(tmp_path / "points.safetensors"))
    (tmp_path / "picky.py").write_text(DISTANCE)
    (tmp_path / "spec.yaml").write_text(
        "model: {factory: torch.nn:Identity}\n"
        "input: {data: points.safetensors:x, sampling: sequential}\nsamples: 384\n"
        "checks:\n  - {name: picky, input: hflip, distance: picky.py:picky}\n  - {name: flip, input: vflip}\n")
    common = ["measure", "--spec", "spec.yaml", "--device", "cpu", "--batch-size", "192", "-q"]
    subprocess.run([sys.executable, "-m", "eqaudit", *common, "--json", "single.json"], cwd=tmp_path)
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "eqaudit", *common, "--json", "split.json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode != 0 and (tmp_path / "split.json").exists(), run.stderr[-2000:]  # exit 2 in each process
    single = json.loads((tmp_path / "single.json").read_text())["checks"]
    split = json.loads((tmp_path / "split.json").read_text())["checks"]
    assert "outputs too large" in single[0]["error"] and split[0]["error"] == single[0]["error"]
    assert split[1] == single[1] and "error" not in split[1]
