"""The speed benchmark's own arithmetic (its figures are printed, not asserted: the machines are
shared and noisy): the operator counts split into a per-chunk and a per-audit part that add up,
and ``--json`` prints every key the speed targets are read from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import measure_vs_ideal as bench  # noqa: E402


def test_operator_counts_add_up_per_chunk_and_per_audit():
    ops = bench.count_ops("mlp", 512)
    assert ops["chunks"] == 1 and ops["chunk"] == 512  # an 80 GB device takes the audit in one chunk
    assert ops["per_chunk"] > ops["ideal"] > 0  # the chunk draws, transforms and folds besides forwarding
    assert ops["per_audit"] + ops["chunks"] * ops["per_chunk"] == ops["device"]
    assert ops["device"] + ops["host"] == ops["eqaudit"] and ops["host"] > 0
    # each draw's fused kernel counts one launch in place of its dozen operators
    assert ops["ideal"] < ops["fused_per_chunk"] < ops["per_chunk"] and ops["fused_device"] < ops["device"]


def test_best_batch_is_one_of_the_swept_powers_of_two():
    import torch

    model, spec = bench.build("mlp", 64, torch.device("cpu"))
    best = bench.best_batch_size(model, spec, torch.device("cpu"), smallest=64, trials=1)
    assert best in (64, 128, 256, 320)  # 64 x (1 + 4) rows: the powers of two below, and all rows


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc options")
def test_json_prints_the_keys_of_the_speed_targets():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "measure_vs_ideal.py"), "--json", "--samples", "128",
         "--repeats", "1", "--no-memory", "--models", "mlp", "--fused-draws"],
        capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(out.stdout)
    for key in ("ratio_vs_ideal", "ratio_vs_best_batch", "ops_eqaudit", "ops_ideal", "ops_per_chunk_eqaudit",
                "ops_per_audit_eqaudit", "ops_host_eqaudit", "chunk_cuda_80gb", "best_batch",
                "ratio_vs_inputs_limit", "ops_fused_device_eqaudit", "ops_fused_per_chunk_eqaudit"):
        assert f"{key}_mlp" in result, key
    assert {"time_eqaudit_mlp_s", "time_best_batch_mlp_s", "time_eqaudit_fused_mlp_s", "ratio_fused_vs_ideal_mlp",
            "ratio_fused_vs_eqaudit_mlp"} <= result.keys()
    assert result["ratio_vs_best_batch_mlp"] > 0
    assert result["steady_allocator"] is True
