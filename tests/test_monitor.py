"""AuditMonitor in a hand-written loop: the audit's metrics every N steps, {} otherwise,
deterministic, and the loop's own random stream and training flag untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from eqaudit.engine.run import audit
from eqaudit.errors import ArgumentError
from eqaudit.monitor import AuditMonitor
from eqaudit.spec import spec_from_dict

SPEC = {"input": {"shape": [1, 4, 4], "bounds": [0, 1]}, "samples": 64, "seed": 2,
        "checks": [{"name": "hflip", "input": "hflip"}, {"name": "rot90", "input": "rot90"}]}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(16, 2))


def _loop(monitor_every: int | None) -> tuple[list[dict], torch.Tensor]:
    model = _model()
    monitor = AuditMonitor(model, spec_from_dict(SPEC), every=monitor_every) if monitor_every else None
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(7)
    logged = []
    for step in range(6):
        model.train()
        x = torch.rand(8, 1, 4, 4)
        loss = model(x).pow(2).mean()  # dropout draws from torch's generator
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if monitor is not None:
            logged.append(monitor.step(step))
            assert model.training
    return logged, model[2].weight.detach().clone()


def test_metrics_every_n_steps_equal_the_audit():
    logged, _ = _loop(3)
    assert [bool(m) for m in logged] == [True, False, False, True, False, False]
    assert set(logged[0]) == {f"eqaudit/{c}/{f}" for c in ("hflip", "rot90") for f in ("mean", "ci_low", "ci_high")}
    assert _loop(3)[0] == logged  # deterministic
    model = _model()
    monitor = AuditMonitor(model, spec_from_dict(SPEC), every=2)
    metrics = monitor.step(4)
    report = audit(model, spec_from_dict(SPEC), noise_floor=False)
    for check in report.checks:
        assert metrics[f"eqaudit/{check.name}/mean"] == check.mean > 0
        assert metrics[f"eqaudit/{check.name}/ci_low"] == check.ci_low < check.mean < check.ci_high
        assert metrics[f"eqaudit/{check.name}/ci_high"] == check.ci_high
    assert monitor.step(5) == {} and monitor.history == [(4, metrics)]


def test_the_monitor_leaves_the_training_alone():
    _, with_monitor = _loop(1)
    _, without = _loop(None)
    assert torch.equal(with_monitor, without)  # same dropout draws: the audit forked torch's generator


def test_bad_arguments():
    with pytest.raises(ArgumentError, match="every"):
        AuditMonitor(_model(), spec_from_dict(SPEC), every=0)
    with pytest.raises(ArgumentError, match="spec"):
        AuditMonitor(_model(), {"checks": []})
