"""The equivariance penalty of one training step: ``sum weight * max(0, mean error - epsilon)``
over the chosen checks, differentiable, in the model's dtype; plus, with ``regularizer.layers``,
the layer terms of the same forward passes (:mod:`.layer_penalty`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .config import FinetuneConfig


def step_penalty(cfg: FinetuneConfig, model: Any, checks: Sequence[int], inputs: Any, outputs: Any,
                 rng: Any, layers: Any = None, base_passes: Sequence[int] = (0,)) -> tuple[Any, dict[str, Any]]:
    """The penalty at the points ``inputs`` whose model outputs are ``outputs``, over the checks
    ``checks`` (indices into the spec), each drawing its parameters from
    ``rng.child("check:NAME")``. The per-sample errors come from the evaluation core
    (:func:`eqaudit.engine.evaluate.evaluate_checks`), one check after the other (a fused model call
    would change batch-norm statistics in training mode) in the outputs' dtype, with gradients.

    ``layers`` (a recording :class:`~.layer_penalty.LayerPenalty`) adds the layer terms, from the
    feature maps its hooks recorded on the base passes (``base_passes``) and the checks' passes.

    Returns the penalty (a 0-d tensor with gradients) and each check's mean error (detached), then
    each penalized layer's mean error as ``layer:NAME``."""
    import torch

    from ..engine.evaluate import evaluate_checks

    evaluation = evaluate_checks(model, cfg.spec.checks, inputs, outputs, rng, cfg, chosen=list(checks),
                                 fuse=False, distance_dtype=None)
    total = torch.zeros((), dtype=outputs.dtype, device=outputs.device)
    errors: dict[str, Any] = {}
    for result in evaluation.checks:
        check = cfg.spec.checks[result.check_index]
        error = result.errors.mean()
        errors[check.name] = error.detach()
        total = total + check.weight * torch.clamp_min(error - check.epsilon, 0.0)
    if layers is not None:
        layer_total, layer_errors = layers.terms_of(evaluation, base_passes, tuple(inputs.shape[-2:]), outputs)
        total = total + layer_total.to(device=total.device, dtype=total.dtype)
        errors.update({f"layer:{name}": error for name, error in layer_errors.items()})
    return total, errors
