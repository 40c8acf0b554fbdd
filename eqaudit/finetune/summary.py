"""What a fine-tune hands back: its JSON report and the :class:`FinetuneResult`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import FinetuneConfig
from ..report.model import json_safe
from .landscape import series_summary
from .sections import OutputConfig


@dataclass
class FinetuneResult:
    """The audits before and after, the metrics, the learning curve and the report of a fine-tune."""

    before: Any  # Report
    after: Any  # Report
    metrics_before: dict[str, Any]
    metrics_after: dict[str, Any]
    curve: list[dict[str, Any]]
    dynamics: dict[str, Any] | None
    report: dict[str, Any]
    paths: OutputConfig
    steps: int
    resumed_from: int | None

    @property
    def exit_code(self) -> int:
        """The CI gate of the final audit: 0 every check within its threshold, 1 otherwise."""
        return int(self.after.exit_code)


@dataclass(frozen=True)
class RunFacts:
    """What the report says about the run besides the audits: its shape, place and times."""

    total_steps: int
    steps_per_epoch: int
    batch_size: int
    penalty_samples: int
    penalized: list[int]
    resumed_from: int | None
    device: str
    elapsed: float
    train_elapsed: float


def audit_spec(cfg: FinetuneConfig) -> Any:
    """The spec of the audits before and after: with a layer-wise penalty and no ``layers`` of its
    own, it reports the penalized layers' errors (the audit's per-layer attribution)."""
    from .layer_penalty import layer_names

    if not cfg.regularizer.layers or cfg.spec.layers is not None:
        return cfg.spec
    return cfg.spec.replace(layers=layer_names(cfg.regularizer.layers))


def layer_report(cfg: FinetuneConfig, before: Any, after: Any) -> list[dict[str, Any]]:
    """Each penalized layer's error per check before and after (the audits' per-layer means)."""
    rows = []
    for check_before, check_after in zip(before.checks, after.checks):
        after_of = {row["name"]: row for row in check_after.layers or []}
        for row in check_before.layers or []:
            later = after_of.get(row["name"], {})
            rows.append({"layer": row["name"], "check": check_before.name,
                         "before": row.get("mean"), "after": later.get("mean"),
                         **({"skipped": row["skipped"]} if "skipped" in row else {})})
    return rows


def build_report(cfg: FinetuneConfig, before: Any, after: Any, metrics_before: dict, metrics_after: dict,
                 curve: list, dynamics: Any, facts: RunFacts, series: list | None = None) -> dict[str, Any]:
    """The fine-tune's JSON report (non-finite numbers as null); ``series``: the dynamics points
    taken every ``dynamics.every`` steps, summarised by the median and IQR of the eigenvalue."""
    from .. import __version__

    options, regularizer, spec = cfg.optimizer, cfg.regularizer, cfg.spec
    optimizer: dict[str, Any] = {"name": options.name, "lr": options.lr, "weight_decay": options.weight_decay}
    if options.name == "sgd":
        optimizer.update(momentum=options.momentum, nesterov=options.nesterov)
    else:
        optimizer["betas"] = list(options.betas)
    report = {
        "tool": "eqaudit",
        "command": "finetune",
        "version": __version__,
        "config": cfg.file,
        "checkpoint_in": str(spec.model.checkpoint) if spec.model.checkpoint else None,
        "checkpoint_out": str(cfg.output.checkpoint),
        "state": str(cfg.output.state),
        "device": facts.device,
        "seed": spec.seed,
        "steps": facts.total_steps,
        "steps_per_epoch": facts.steps_per_epoch,
        "epochs": facts.total_steps / facts.steps_per_epoch,
        "batch_size": facts.batch_size,
        "task_loss": cfg.task_loss,
        "optimizer": optimizer,
        "regularizer": {"points": regularizer.points,
                        "samples": facts.penalty_samples if regularizer.points != "data" else None,
                        "num_funcs": regularizer.num_funcs, "every": regularizer.every,
                        "checks": [spec.checks[j].name for j in facts.penalized]},
        "resumed_from_step": facts.resumed_from,
        "elapsed_s": round(facts.elapsed, 4),
        "train_elapsed_s": round(facts.train_elapsed, 4),
        "passed": after.passed,
        "before": {"audit": before.to_dict(), "metrics": metrics_before},
        "after": {"audit": after.to_dict(), "metrics": metrics_after},
        "curve": curve,
        "dynamics": dynamics,
    }
    if series:
        report["dynamics_series"] = {"every": cfg.dynamics.every, "points": series,
                                     "hessian_top": series_summary([p.get("hessian_top") for p in series])}
        if any("sharpness" in p for p in series):
            report["dynamics_series"]["sharpness"] = series_summary([p.get("sharpness") for p in series])
    if regularizer.layers:
        report["regularizer"]["layers"] = [{"name": t.name, "weight": t.weight, "epsilon": t.epsilon}
                                           for t in regularizer.layers]
        report["layers"] = layer_report(cfg, before, after)
    return json_safe(report)
