"""Auditing during a hand-written training loop: :class:`AuditMonitor` audits the model every N
steps and hands back each check's mean and confidence interval as a flat metrics dict.

>>> monitor = AuditMonitor(model, "spec.yaml", every=100)
>>> for step, (x, y) in enumerate(loader):
...     ...                                          # the loop's own forward, loss, step
...     metrics = monitor.step(step)                 # {} unless step % 100 == 0
...     for name, value in metrics.items():
...         writer.add_scalar(name, value, step)     # eqaudit/rot90/mean, .../ci_low, .../ci_high

The audit is the engine's (:func:`eqaudit.engine.run.audit`), seeded by the spec: the same weights
give the same numbers. It runs in eval mode without gradients, restores the model's training flag
and leaves torch's random generators where the loop left them (dropout draws are not shifted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ArgumentError

__all__ = ["AuditMonitor", "audit_metrics"]


def check_period(name: str, value: Any) -> int:
    """An audit period (every N steps or epochs): an integer >= 1, else ArgumentError ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ArgumentError(name, f"must be an integer >= 1, got {value!r}")
    return value


def as_spec(spec: Any) -> Any:
    """A parsed :class:`~eqaudit.spec.Spec` from a Spec or a spec file, else ArgumentError ``spec``."""
    from .spec import Spec, load_spec

    if isinstance(spec, (str, Path)):
        spec = load_spec(spec)
    if not isinstance(spec, Spec):
        raise ArgumentError("spec", f"expected a Spec or a spec file, got {type(spec).__name__}")
    return spec


def audit_metrics(model: Any, spec: Any, *, samples: int | None = None, device: Any = None,
                  prefix: str = "eqaudit") -> dict[str, float]:
    """Audit ``model`` against ``spec`` (a :class:`~eqaudit.spec.Spec` or a spec file) and return
    ``{prefix/CHECK/mean, prefix/CHECK/ci_low, prefix/CHECK/ci_high}`` for every measured check
    (a check that could not be measured is left out). torch's generators are left untouched."""
    import torch

    from .engine.run import audit

    cuda = [d for d in {p.device for p in _parameters(model)} if d.type == "cuda"]
    with torch.random.fork_rng(devices=cuda):
        report = audit(model, spec, samples=samples, device=device, noise_floor=False)
    metrics: dict[str, float] = {}
    for check in report.checks:
        if check.error is not None:
            continue
        for figure in ("mean", "ci_low", "ci_high"):
            metrics[f"{prefix}/{check.name}/{figure}"] = float(getattr(check, figure))
    return metrics


def _parameters(model: Any) -> list[Any]:
    return list(model.parameters()) if hasattr(model, "parameters") else []


class AuditMonitor:
    """Audit ``model`` against ``spec`` every ``every`` steps of a training loop.

    Args:
        model: the network being trained (audited in eval mode; its training flag is restored).
        spec: a :class:`~eqaudit.spec.Spec` or the path of a spec file (read once, here).
        every: audit at steps ``0, every, 2 * every, ...`` (an integer >= 1).
        samples: overrides the spec's ``samples`` (fewer points: a cheaper audit).
        device: where the audit runs (None: where the model is).
        prefix: the first part of every metric name.
    """

    def __init__(self, model: Any, spec: Any, *, every: int = 1, samples: int | None = None,
                 device: Any = None, prefix: str = "eqaudit") -> None:
        every = check_period("every", every)
        self.model, self.spec, self.every = model, as_spec(spec), every
        self.samples, self.device, self.prefix = samples, device, prefix
        self.history: list[tuple[int, dict[str, float]]] = []

    def due(self, global_step: int) -> bool:
        """Whether ``global_step`` is an audit step."""
        return int(global_step) % self.every == 0

    def step(self, global_step: int) -> dict[str, float]:
        """The metrics of an audit at ``global_step`` when it is due (``{}`` otherwise); every
        audit is also appended to :attr:`history`."""
        if not self.due(global_step):
            return {}
        metrics = audit_metrics(self.model, self.spec, samples=self.samples, device=self.device, prefix=self.prefix)
        self.history.append((int(global_step), metrics))
        return metrics
