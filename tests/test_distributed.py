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
