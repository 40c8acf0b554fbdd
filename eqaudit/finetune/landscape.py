"""The training-dynamics figures of a fine-tuned model: sharpness and the top Hessian eigenvalue of
its task loss on the first training rows (the maths lives in :mod:`.dynamics`)."""

from __future__ import annotations

import math
from typing import Any

from .dynamics import sharpness, top_hessian_eigenvalue
from .config import FinetuneConfig
from .data import Examples, move_batch
from .losses import call_model, loss_value, make_task_loss
from .sections import DynamicsConfig


def compute_dynamics(cfg: FinetuneConfig, options: DynamicsConfig, model: Any, train: Examples, device: Any,
                     dtype: Any) -> dict[str, Any]:
    """Sharpness phi and the top Hessian eigenvalue of the task loss on the first ``examples``
    training rows, the model in eval mode (a deterministic function of the weights)."""
    import torch

    rows = min(options.examples, len(train))
    inputs, targets = train.batch(torch.arange(rows))
    inputs, targets = move_batch(inputs, device, dtype), targets.to(device)
    loss_fn = make_task_loss(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()

    def task_loss() -> Any:
        return loss_value(loss_fn, call_model(model, inputs, cfg, "data.inputs"), targets, cfg)

    result: dict[str, Any] = {"examples": rows, "split": "train", "mode": "eval",
                              "parameters": int(sum(p.numel() for p in params))}
    try:
        figures = sharpness(task_loss, params, displacements=options.displacements,
                            directions=options.directions, seed=cfg.spec.seed)
        result["loss"] = figures.pop("loss")
        result["sharpness"] = {"definition": "mean over unit directions d (norm 1 over all parameters) and "
                               "displacements t of |L(w + t d) - L(w)|", **figures}
        try:
            top = top_hessian_eigenvalue(task_loss, params, iterations=options.iterations, seed=cfg.spec.seed)
            result["hessian"] = {"definition": "dominant eigenvalue of the Hessian of the task loss, power "
                                 "iteration on Hessian-vector products", **top}
        except RuntimeError as exc:  # an op without double backward
            result["hessian"] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    finally:
        model.train(was_training)
    return finite(result)


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite(v) for v in obj]
    return obj
