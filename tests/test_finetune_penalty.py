"""The fine-tune penalty is the evaluation core's errors: the same per-sample numbers as the audit
on the same points, for drawn transforms, masks and groups; Lie checks (no gradient) are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from eqaudit.engine.evaluate import evaluate_checks
from eqaudit.errors import EqauditError
from eqaudit.finetune import Trainer, TensorData, config_from_dict

CHECKS = [
    {"name": "rotate", "both": {"rotate": {"degrees": [-30, 30]}}, "epsilon": 0.001},
    {"name": "shift", "both": {"shift": {"dx": [-2, 2], "dy": [-2, 2]}}, "mask": "valid", "weight": 2.0},
    {"name": "d4", "group": "D4", "output": "same", "weight": 0.5},
    {"name": "audit-only", "both": "rot90", "weight": 0},
]


def _config(tmp_path: Path, checks=CHECKS):
    from safetensors.torch import save_file

    save_file({"inputs": torch.rand(8, 1, 8, 8), "targets": torch.rand(8, 1, 8, 8)}, str(tmp_path / "d.safetensors"))
    return config_from_dict({
        "input": {"shape": [1, 8, 8]}, "seed": 3, "checks": checks, "data": "d.safetensors", "task_loss": "mse",
        "steps": 2, "batch_size": 8, "output": {"checkpoint": "o.safetensors"},
    }, tmp_path)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, 1, 3, padding=1)).double()


def test_the_penalty_is_the_weighted_hinge_of_the_cores_errors(tmp_path):
    cfg = _config(tmp_path)
    model = _model()
    x = torch.rand(8, 1, 8, 8, dtype=torch.float64)
    trainer = Trainer(cfg, model, TensorData(x, x), "cpu")
    y = model(x)
    penalty, errors = trainer.penalty(x, y, 5)
    assert penalty.requires_grad and set(errors) == {"rotate", "shift", "d4"}  # weight 0: not penalized
    # the same points through the core as the audit calls it (float64 distances, fused forward)
    with torch.no_grad():
        core = evaluate_checks(model, cfg.spec.checks, x, y, trainer._rng(5, 8, "penalty"), cfg.spec,
                               chosen=[0, 1, 2])
    expected = torch.zeros((), dtype=torch.float64)
    for result in core.checks:
        check = cfg.spec.checks[result.check_index]
        mean = result.errors.mean()
        assert float(errors[check.name]) == pytest.approx(float(mean), rel=1e-12, abs=1e-15), check.name
        expected = expected + check.weight * torch.clamp_min(mean - check.epsilon, 0.0)
    assert float(penalty.detach()) == pytest.approx(float(expected), rel=1e-12)
    assert float(errors["shift"]) > 0 and float(errors["d4"]) > 0
    penalty.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_a_penalized_lie_check_is_refused(tmp_path):
    # the core's Lie-derivative errors are detached: the penalty would count them and train nothing
    lie = {"name": "lie", "both": {"rotate": {"degrees": [-30, 30]}}, "mode": "lie"}
    with pytest.raises(EqauditError, match=r"checks\[1\]\.mode: a Lie-derivative check cannot be penalized"):
        _config(tmp_path, [CHECKS[0], lie])
    cfg = _config(tmp_path, [CHECKS[0], dict(lie, weight=0)])  # audited only
    assert cfg.spec.checks[1].mode == "lie"
