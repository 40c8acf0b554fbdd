"""The Lie-derivative strategy of a check (``mode: lie``): the derivative of the equivariance
error along a one-parameter path of transforms at the identity, by forward-mode AD."""

from __future__ import annotations

from typing import Any

import torch

from transforms_zoo import TransformError

from ..errors import first_line
from .forward import Locator, is_oom


def lie_derivative(model: Any, check: Any, x: torch.Tensor) -> torch.Tensor:
    """``d/dt f_out(t)^-1 f(f_in(t)(x))`` at ``t = 0`` per sample, by forward-mode AD
    (``torch.func.jvp``), for transforms with a one-parameter path (``lie_path(x, t)``).
    The result is detached: it carries no gradient to the model's parameters."""
    import warnings

    t_in = check.input
    t_out = check.input if check.both else (None if check.output.name == "identity" else check.output)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.enable_grad():
        # torch.func scripts a helper on first use, which warns about torch.jit.script in torch 2.13
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
        xc = x.clone()
        real = xc.dtype if xc.is_floating_point() else torch.float32
        t0 = torch.zeros(xc.shape[0], dtype=real, device=xc.device)

        def path(t: torch.Tensor) -> torch.Tensor:
            y = model(t_in.lie_path(xc, t))
            return t_out.lie_path(y, -t) if t_out is not None else y

        _, d = torch.func.jvp(path, (t0,), (torch.ones_like(t0),))
    return d.detach()


def lie_errors(model: Any, check: Any, j: int, x: torch.Tensor, locate: Locator,
               distance_dtype: torch.dtype | None = torch.float64) -> torch.Tensor:
    """Check ``j``'s distance of the Lie derivative from zero, per sample (``distance_dtype``, or
    the derivative's own dtype when None); failures raise ``locate.error`` at the check's key."""
    try:
        d = lie_derivative(model, check, x)
    except TransformError as exc:
        raise locate.error(f"checks[{j}].{'both' if check.both else 'input'}", exc.message, exc.hint) from None
    except Exception as exc:
        if is_oom(exc):
            raise
        raise locate.error(f"checks[{j}].mode", "the Lie derivative failed (forward-mode AD through the model): "
                           f"{first_line(exc)}", "the model must support torch.func.jvp") from None
    if distance_dtype is not None:
        d = d.to(torch.complex128 if d.is_complex() and distance_dtype == torch.float64 else distance_dtype)
    e = check.distance(d, torch.zeros_like(d)).reshape(-1)
    if e.is_complex():
        raise locate.error(f"checks[{j}].distance", f"distance '{check.distance.name}' returned complex values",
                           "a distance returns one real number per sample")
    return e if distance_dtype is None else e.to(distance_dtype)
