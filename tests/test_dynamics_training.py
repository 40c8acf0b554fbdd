"""Training dynamics over time (``dynamics.every``): each check's audited error, the top Hessian
eigenvalue and optionally the sharpness every N steps; summarised by median and IQR; exact on resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from eqaudit.engine.run import audit
from eqaudit.errors import EqauditError
from eqaudit.finetune import config_from_dict, run_finetune
from eqaudit.finetune.dynamics import top_hessian_eigenvalue

CHECKS = [{"name": "rot90", "input": "rot90", "weight": 0.5}, {"name": "hflip", "input": "hflip", "weight": 0}]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Dropout(0.3), nn.Flatten(),
                         nn.Linear(48, 2)).double()


def _config(tmp_path: Path, dynamics=None, **extra):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 1, 4, 4, generator=g)
    save_file({"inputs": x, "targets": (x[:, 0, :2].sum((1, 2)) > x[:, 0, 2:].sum((1, 2))).long()},
              str(tmp_path / "d.safetensors"))
    return config_from_dict({
        "input": {"shape": [1, 4, 4], "bounds": [0, 1]}, "seed": 5, "samples": 64, "checks": CHECKS,
        "data": "d.safetensors", "steps": 6, "batch_size": 8, "log_every": 1,
        "optimizer": {"name": "adam", "lr": 0.05}, "output": {"checkpoint": "o.safetensors"},
        **({"dynamics": dynamics} if dynamics is not None else {}), **extra,
    }, tmp_path)


def _weights(tmp_path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(tmp_path / "o.safetensors"))


def test_the_series_is_the_audit_and_the_eigenvalue_at_those_steps(tmp_path):
    cfg = _config(tmp_path, {"every": 2, "samples": 32, "iterations": 30, "examples": 16, "sharpness": True})
    model = _model()
    result = run_finetune(cfg, model=model, handle_sigint=False)
    series = result.report["dynamics_series"]
    assert series["every"] == 2 and [p["step"] for p in series["points"]] == [2, 4, 6]
    last = series["points"][-1]  # taken at the final weights: the same as measuring them now
    final = audit(model, cfg.spec.replace(samples=32), noise_floor=False)
    assert last["errors"] == {c.name: c.mean for c in final.checks}
    x = load_file(str(tmp_path / "d.safetensors"))
    inputs, targets = x["inputs"][:16].double(), x["targets"][:16]
    model.eval()
    top = top_hessian_eigenvalue(lambda: nn.functional.cross_entropy(model(inputs), targets),
                                 list(model.parameters()), iterations=30, seed=5)
    assert last["hessian_top"] == top["eigenvalue"] and result.report["dynamics"]["hessian"]["eigenvalue"] == top[
        "eigenvalue"]
    assert all(p["sharpness"] > 0 for p in series["points"])
    eig = sorted(p["hessian_top"] for p in series["points"])
    # median and IQR of three values with linear interpolation: q1 halfway between the first two
    summary = series["hessian_top"]
    assert summary["n"] == 3 and summary["median"] == pytest.approx(eig[1], rel=1e-15)
    assert summary["q1"] == pytest.approx((eig[0] + eig[1]) / 2, rel=1e-12)
    assert summary["iqr"] == pytest.approx((eig[2] - eig[0]) / 2, rel=1e-12)


def test_measuring_does_not_change_the_training(tmp_path):
    # dropout draws from torch's generator; the series runs in eval mode under fork_rng
    run_finetune(_config(tmp_path), model=_model(), handle_sigint=False)
    plain = _weights(tmp_path)
    result = run_finetune(_config(tmp_path, {"every": 1, "enabled": False}), model=_model(), handle_sigint=False,
                          force=True)
    assert len(result.report["dynamics_series"]["points"]) == 6 and result.report["dynamics"] is None
    assert all(torch.equal(plain[k], v) for k, v in _weights(tmp_path).items())


def test_resume_keeps_the_series_exact(tmp_path):
    cfg = _config(tmp_path, {"every": 2, "enabled": False, "iterations": 20})
    ref = run_finetune(cfg, model=_model(), handle_sigint=False)
    reference = _weights(tmp_path)
    run_finetune(cfg, model=_model(), handle_sigint=False, steps=3, force=True)  # stopped between two points
    (tmp_path / "o.safetensors").unlink()
    resumed = run_finetune(cfg, model=_model(), handle_sigint=False, resume=True)
    assert resumed.resumed_from == 3
    assert resumed.report["dynamics_series"] == ref.report["dynamics_series"]
    assert all(torch.equal(reference[k], v) for k, v in _weights(tmp_path).items())


def test_without_every_there_is_no_series(tmp_path):
    result = run_finetune(_config(tmp_path, {"enabled": True, "iterations": 5}), model=_model(), handle_sigint=False)
    assert "dynamics_series" not in result.report


@pytest.mark.parametrize("dynamics, key, words", [
    ({"evry": 2}, r"dynamics\.evry", "did you mean 'every'"),
    ({"every": -1}, r"dynamics\.every", ">= 0"),
    ({"every": 2, "sharpness": "yes"}, r"dynamics\.sharpness", "true or false"),
    ({"every": 2, "samples": 0}, r"dynamics\.samples", ">= 1"),
])
def test_bad_dynamics_keys_are_located(tmp_path, dynamics, key, words):
    with pytest.raises(EqauditError, match=key) as info:
        _config(tmp_path, dynamics)
    assert words in str(info.value)
