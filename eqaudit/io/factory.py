"""Build a fresh module from ``model.factory`` (``package.module:callable``, ``file.py:callable``,
a callable or a module instance) with ``model.kwargs``; every mistake is an error at its key."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from transforms_zoo._resolve import ReferenceError_, resolve_reference

from ..errors import EqauditError, squeezed

__all__ = ["build_from_factory", "factory_label", "type_name"]

Error = Callable[..., EqauditError]  # error(key, message, hint=None)


def type_name(obj: Any) -> str:
    """``int``, or ``package.module.Class`` for non-builtin types."""
    t = type(obj)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def factory_label(factory: str | Callable) -> str:
    """How errors name the factory."""
    if isinstance(factory, str):
        return factory
    return getattr(factory, "__qualname__", None) or getattr(factory, "__name__", None) or type_name(factory)


def _resolve(factory: str | Callable, base_dir: Path | None, error: Error) -> Any:
    if not isinstance(factory, str):
        return factory
    try:
        return resolve_reference(factory, base_dir)
    except ReferenceError_ as exc:
        raise error("model.factory", str(exc),
                    "use 'package.module:callable' or 'path/to/file.py:callable'; "
                    "module names and relative paths resolve against the spec's folder") from None


def _check_kwargs(obj: Callable, kwargs: dict, label: str, error: Error) -> None:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(**kwargs)
    except TypeError as exc:
        params = [p for p in sig.parameters if p not in ("self",)]
        raise error("model.kwargs", f"'{label}' does not accept these kwargs: {exc}",
                    ("it takes: " + ", ".join(params)) if params else "it takes no arguments") from None


def build_from_factory(factory: str | Callable, kwargs: Any, base_dir: Path | None, error: Error) -> nn.Module:
    """Call the factory with ``kwargs`` and return the module it builds."""
    kwargs = kwargs if kwargs is not None else {}
    if not isinstance(kwargs, Mapping):
        raise error("model.kwargs", f"expected a mapping of keyword arguments, got {type_name(kwargs)}",
                    "write it as a mapping, e.g. kwargs: {channels: 16}")
    kwargs = dict(kwargs)
    if isinstance(factory, nn.Module):  # an instance passed through the Python API
        if kwargs:
            raise error("model.kwargs", "the factory is already a module instance; kwargs cannot apply",
                        "pass the class instead, or drop kwargs")
        return factory
    obj = _resolve(factory, base_dir, error)
    label = factory_label(factory)
    if isinstance(obj, nn.Module):
        if kwargs:
            raise error("model.kwargs", f"'{label}' is a module instance, not a class; kwargs cannot apply",
                        "name the class or a function that builds the model, or drop kwargs")
        return obj
    if not callable(obj):
        raise error("model.factory", f"'{label}' is {type_name(obj)}, not callable",
                    "name a class or function that returns an nn.Module")
    _check_kwargs(obj, kwargs, label, error)
    try:
        model = obj(**kwargs)
    except EqauditError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's factory raised
        raise error("model.factory", f"calling '{label}' failed: {type(exc).__name__}: {squeezed(exc)}",
                    "check model.kwargs and the factory's code") from None
    if not isinstance(model, nn.Module):
        raise error("model.factory", f"'{label}' returned {type_name(model)}, not a torch.nn.Module",
                    "the factory must build and return the model")
    return model
