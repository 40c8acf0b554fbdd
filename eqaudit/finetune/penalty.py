"""The equivariance penalty of one training step: ``sum weight * max(0, mean error - epsilon)``
over the chosen checks, differentiable, in the model's dtype."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .config import FinetuneConfig


def step_penalty(cfg: FinetuneConfig, model: Any, checks: Sequence[int], inputs: Any, outputs: Any,
                 rng: Any) -> tuple[Any, dict[str, Any]]:
    """The penalty at the points ``inputs`` whose model outputs are ``outputs``, over the checks
    ``checks`` (indices into the spec), each drawing its parameters from
    ``rng.child("check:NAME")``. The per-sample errors come from the evaluation core
    (:func:`eqaudit.audit.evaluate.evaluate_checks`), one check after the other (a fused model call
    would change batch-norm statistics in training mode) in the outputs' dtype, with gradients.

    Returns the penalty (a 0-d tensor with gradients) and each check's mean error (detached)."""
    import torch

    from ..audit.evaluate import evaluate_checks

    evaluation = evaluate_checks(model, cfg.spec.checks, inputs, outputs, rng, cfg, chosen=list(checks),
                                 fuse=False, distance_dtype=None)
    total = torch.zeros((), dtype=outputs.dtype, device=outputs.device)
    errors: dict[str, Any] = {}
    for result in evaluation.checks:
        check = cfg.spec.checks[result.check_index]
        error = result.errors.mean()
        errors[check.name] = error.detach()
        total = total + check.weight * torch.clamp_min(error - check.epsilon, 0.0)
    return total, errors
