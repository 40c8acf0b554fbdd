"""The model's forward on training data, the task loss, and the validation metrics (task loss and
accuracy) -- each failure of user code an error at the config key that named it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import EqauditError
from .config import FinetuneConfig
from .data import Examples, move_batch


def call_model(model: Any, inputs: Any, cfg: FinetuneConfig, key: str) -> Any:
    """``model(inputs)`` checked by the evaluation core's forward: a failure, or an output without
    the batch dimension, is an error at the config key ``key`` (out-of-memory passes through)."""
    from ..engine.forward import forward_once

    return forward_once(model, inputs, cfg, key)


def make_task_loss(cfg: FinetuneConfig) -> Callable[[Any, Any], Any]:
    """The task loss ``f(outputs, targets) -> scalar`` named by ``task_loss``."""
    import torch
    import torch.nn.functional as F

    name = cfg.task_loss
    if name == "cross_entropy":
        def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            if targets.is_floating_point():
                return F.cross_entropy(outputs, targets.to(outputs.dtype))
            return F.cross_entropy(outputs, targets)
        return cross_entropy
    if name == "mse":
        def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            targets = targets.to(outputs.dtype)
            if targets.shape != outputs.shape:
                if targets.numel() != outputs.numel():
                    raise cfg.error("task_loss", f"mse: outputs of shape {list(outputs.shape)} and targets of shape "
                                    f"{list(targets.shape)} differ")
                targets = targets.reshape(outputs.shape)
            return F.mse_loss(outputs, targets)
        return mse
    from transforms_zoo._resolve import ReferenceError_, resolve_reference

    try:
        fn = resolve_reference(name, cfg.base_dir)
    except ReferenceError_ as exc:
        raise cfg.error("task_loss", str(exc)) from None
    if not callable(fn):
        raise cfg.error("task_loss", f"'{name}' is not callable")
    return fn


def loss_value(loss_fn: Callable, outputs: Any, targets: Any, cfg: FinetuneConfig) -> Any:
    """``loss_fn(outputs, targets)`` as a 0-d tensor; a failure or a non-scalar is an error at ``task_loss``."""
    import torch

    try:
        loss = loss_fn(outputs, targets)
    except EqauditError:
        raise
    except Exception as exc:
        from ..engine.forward import is_oom

        if is_oom(exc):
            raise
        raise cfg.error("task_loss", f"{cfg.task_loss} failed on outputs {list(outputs.shape)} and targets "
                        f"{list(targets.shape)}: {type(exc).__name__}: {exc}") from None
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise cfg.error("task_loss", f"{cfg.task_loss} must return a scalar tensor")
    return loss.reshape(())


def evaluate(model: Any, data: Examples, cfg: FinetuneConfig, device: Any,
             dtype: Any, *, batch: int = 1024) -> dict[str, Any]:
    """Task loss (mean over examples) and, for class targets, accuracy, in eval mode."""
    import torch

    loss_fn = make_task_loss(cfg)
    was_training = model.training
    model.eval()
    loss_sum, correct, count, classify = 0.0, 0, 0, None
    try:
        with torch.no_grad():
            for start in range(0, len(data), batch):
                inputs, targets = data.batch(torch.arange(start, min(start + batch, len(data))))
                inputs, targets = move_batch(inputs, device, dtype), targets.to(device)
                outputs = call_model(model, inputs, cfg, "data.val_inputs")
                rows = inputs.shape[0]
                loss_sum += float(loss_value(loss_fn, outputs, targets, cfg)) * rows
                if classify is None:
                    classify = (not targets.is_floating_point()) and targets.dim() == 1 and outputs.dim() == 2
                if classify:
                    correct += int((outputs.argmax(dim=1) == targets).sum())
                count += rows
    finally:
        model.train(was_training)
    return {
        "split": data.label,
        "n": count,
        "loss": loss_sum / count,
        "accuracy": correct / count if classify else None,
    }
