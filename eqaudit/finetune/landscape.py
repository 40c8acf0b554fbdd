"""The training-dynamics figures of a fine-tune: sharpness and the top Hessian eigenvalue of its task
loss on the first training rows, at the final point and (``dynamics.every``) along the way with
each check's audited error (the maths lives in :mod:`.dynamics`)."""

from __future__ import annotations

import math
from typing import Any

from ..report.model import json_safe
from .dynamics import sharpness, top_hessian_eigenvalue
from .config import FinetuneConfig
from .data import Examples, move_batch
from .losses import call_model, loss_value, make_task_loss
from .sections import DynamicsConfig


def _task_loss_at(cfg: FinetuneConfig, options: DynamicsConfig, model: Any, train: Examples, device: Any,
                  dtype: Any) -> tuple[Any, list[Any], int]:
    """The task loss on the first ``examples`` training rows as a closure, the trainable
    parameters, and the number of rows."""
    import torch

    rows = min(options.examples, len(train))
    inputs, targets = train.batch(torch.arange(rows))
    inputs, targets = move_batch(inputs, device, dtype), targets.to(device)
    loss_fn = make_task_loss(cfg)

    def task_loss() -> Any:
        return loss_value(loss_fn, call_model(model, inputs, cfg, "data.inputs"), targets, cfg)

    return task_loss, [p for p in model.parameters() if p.requires_grad], rows


def _hessian(task_loss: Any, params: list[Any], options: DynamicsConfig, seed: int) -> dict[str, Any]:
    """The top Hessian eigenvalue figures, or the error of an op without double backward."""
    try:
        top = top_hessian_eigenvalue(task_loss, params, iterations=options.iterations, seed=seed)
    except RuntimeError as exc:
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    return {"definition": "dominant eigenvalue of the Hessian of the task loss, power "
            "iteration on Hessian-vector products", **top}


def compute_dynamics(cfg: FinetuneConfig, options: DynamicsConfig, model: Any, train: Examples, device: Any,
                     dtype: Any) -> dict[str, Any]:
    """Sharpness phi and the top Hessian eigenvalue of the task loss on the first ``examples``
    training rows, the model in eval mode (a deterministic function of the weights)."""
    task_loss, params, rows = _task_loss_at(cfg, options, model, train, device, dtype)
    was_training = model.training
    model.eval()
    result: dict[str, Any] = {"examples": rows, "split": "train", "mode": "eval",
                              "parameters": int(sum(p.numel() for p in params))}
    try:
        figures = sharpness(task_loss, params, displacements=options.displacements,
                            directions=options.directions, seed=cfg.spec.seed)
        result["loss"] = figures.pop("loss")
        result["sharpness"] = {"definition": "mean over unit directions d (norm 1 over all parameters) and "
                               "displacements t of |L(w + t d) - L(w)|", **figures}
        result["hessian"] = _hessian(task_loss, params, options, cfg.spec.seed)
    finally:
        model.train(was_training)
    return json_safe(result)


def dynamics_point(cfg: FinetuneConfig, options: DynamicsConfig, model: Any, train: Examples, device: Any,
                   dtype: Any, step: int) -> dict[str, Any]:
    """The figures of one point of the series (``dynamics.every``): each check's mean error by the
    audit on ``dynamics.samples`` points (the spec's seed), the top Hessian eigenvalue and, with
    ``dynamics.sharpness``, the sharpness phi; in eval mode, torch's generators left untouched."""
    import torch

    from ..engine.run import audit

    cuda = [device] if torch.device(device).type == "cuda" else []
    was_training = model.training
    point: dict[str, Any] = {"step": step}
    try:
        with torch.random.fork_rng(devices=cuda):
            model.eval()
            report = audit(model, cfg.spec.replace(samples=options.samples), device=device, noise_floor=False)
            point["errors"] = {c.name: c.mean for c in report.checks}
            task_loss, params, _ = _task_loss_at(cfg, options, model, train, device, dtype)
            hessian = _hessian(task_loss, params, options, cfg.spec.seed)
            point["hessian_top"] = hessian.get("eigenvalue")
            if "error" in hessian:
                point["hessian_error"] = hessian["error"]
            if options.sharpness:
                point["sharpness"] = sharpness(task_loss, params, displacements=options.displacements,
                                               directions=options.directions, seed=cfg.spec.seed)["phi"]
    finally:
        model.train(was_training)
    return json_safe(point)


def series_summary(values: list[float | None]) -> dict[str, Any]:
    """Median, quartiles and interquartile range of a series (linear interpolation; None dropped)."""
    import torch

    kept = [v for v in values if v is not None and math.isfinite(v)]
    if not kept:
        return {"n": 0, "median": None, "q1": None, "q3": None, "iqr": None}
    q1, median, q3 = torch.quantile(torch.tensor(kept, dtype=torch.float64),
                                    torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
    return {"n": len(kept), "median": median, "q1": q1, "q3": q3, "iqr": q3 - q1}
