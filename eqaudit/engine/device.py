"""Where and in what precision the model runs: the device named by the caller, the model's own
floating-point dtype, and mixed-precision (autocast) forward passes."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ArgumentError


def resolve_device(device: str | torch.device | None, model: torch.nn.Module | None = None) -> torch.device:
    """``auto`` picks CUDA when present; None keeps the model's own device (the CPU for a model
    without tensors). An unknown or unavailable device is an :class:`ArgumentError` at ``device``."""
    if device is None:
        if model is not None:
            for t in list(model.parameters()) + list(model.buffers()):
                return t.device
        return torch.device("cpu")
    text = str(device)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise ArgumentError("device", f"unknown device '{text}'", hint="use auto, cpu, cuda or cuda:K") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ArgumentError("device", f"device '{text}' requested but CUDA is not available",
                                hint="use the device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ArgumentError("device", f"device '{text}' does not exist ({torch.cuda.device_count()} CUDA devices)")
    elif dev.type not in ("cpu", "mps", "xpu"):
        raise ArgumentError("device", f"unsupported device '{text}'", hint="use auto, cpu, cuda or cuda:K")
    elif dev.type != "cpu":
        backend = getattr(torch.backends, dev.type, None) if dev.type == "mps" else getattr(torch, dev.type, None)
        if backend is None or not backend.is_available():
            raise ArgumentError("device", f"device '{text}' requested but this PyTorch build or machine has no "
                                f"{dev.type}", hint="use the device cpu or auto")
    return dev


def model_device_dtype(model: Any) -> tuple[torch.device, torch.dtype]:
    """The device and dtype of the model's first floating-point parameter (else buffer); a model
    without one: the device of its first tensor (else the CPU) and the default dtype."""
    device: torch.device | None = None
    if isinstance(model, torch.nn.Module):
        for t in list(model.parameters()) + list(model.buffers()):
            if device is None:
                device = t.device
            if t.is_floating_point():
                return t.device, t.dtype
    return (device or torch.device("cpu")), torch.get_default_dtype()


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (else buffer); the default dtype
    for a model without any."""
    return model_device_dtype(model)[1]


class Autocast:
    """Calls a model under ``torch.autocast`` (mixed-precision forward passes)."""

    def __init__(self, model: Any, device: torch.device, dtype: torch.dtype) -> None:
        self.model, self.device_type, self.dtype = model, device.type, dtype

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(x)
