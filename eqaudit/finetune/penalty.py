"""The equivariance penalty of one training step: ``sum weight * max(0, mean error - epsilon)``
over the chosen checks, differentiable, in the model's dtype."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import EqauditError
from .config import FinetuneConfig
from .losses import call_model


def step_penalty(cfg: FinetuneConfig, model: Any, checks: Sequence[int], inputs: Any, outputs: Any,
                 rng: Any) -> tuple[Any, dict[str, Any]]:
    """The penalty at the points ``inputs`` whose model outputs are ``outputs``, over the checks
    ``checks`` (indices into the spec), each drawing its parameters from ``rng.child("check:NAME")``.

    Returns the penalty (a 0-d tensor with gradients) and each check's mean error (detached)."""
    import torch

    from transforms_zoo import TransformError

    total = torch.zeros((), dtype=outputs.dtype, device=outputs.device)
    errors: dict[str, Any] = {}
    for index in checks:
        check = cfg.spec.checks[index]
        where = f"checks[{index}]"
        in_key = f"{where}.both" if check.both else f"{where}.input"
        out_key = f"{where}.both" if check.both else f"{where}.output"
        check_rng = rng.child(f"check:{check.name}")
        try:
            params_in = check.input.sample(check_rng)
            params_out = params_in if check.both else check.output.sample(check_rng.child("output"))
            moved_inputs = check.input.apply(inputs, params_in)
        except TransformError as exc:
            raise cfg.error(in_key, exc.message, exc.hint) from None
        outputs_of_moved = call_model(model, moved_inputs, cfg, in_key)
        try:
            moved_outputs = check.output.apply(outputs, params_out)
        except TransformError as exc:
            raise cfg.error(out_key, exc.message, exc.hint) from None
        if moved_outputs.shape != outputs_of_moved.shape:
            raise cfg.error(out_key, f"output transform gives shape {list(moved_outputs.shape[1:])} but the "
                            f"model's output on transformed inputs has shape {list(outputs_of_moved.shape[1:])}")
        try:
            error = check.distance(moved_outputs, outputs_of_moved.to(moved_outputs.dtype)).reshape(-1).mean()
        except EqauditError as exc:
            raise exc.located(file=cfg.file, key=f"{where}.distance") from None
        errors[check.name] = error.detach()
        total = total + check.weight * torch.clamp_min(error - check.epsilon, 0.0)
    return total, errors
