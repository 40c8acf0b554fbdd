"""State dicts from checkpoints: unwrap training-loop dicts, strip wrapper prefixes, and say
exactly how a state dict does not fit the model (missing, unexpected, shapes, integer weights)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["WRAPPER_KEYS", "diagnose", "listing", "strip_prefix", "unwrap"]

WRAPPER_KEYS = ("model_state_dict", "state_dict", "model")
_SHOW = 5  # keys listed per category in error messages


def listing(keys: list[str], what: str) -> str:
    """``what (N): a, b, c, ... (+K more)``."""
    shown = ", ".join(keys[:_SHOW])
    more = f", ... (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return f"{what} ({len(keys)}): {shown}{more}"


def _all_tensors(d: Mapping) -> bool:
    return all(isinstance(v, torch.Tensor) for v in d.values())


def unwrap(obj: Any) -> Any:
    """The state dict (or module) inside a training checkpoint dict (``state_dict``,
    ``model_state_dict`` or ``model`` beside optimizer state); ``obj`` itself otherwise."""
    if isinstance(obj, Mapping) and not _all_tensors(obj):
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                return inner
            if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
    return obj


def strip_prefix(state: dict[str, Any], expected: Mapping[str, Any]) -> dict[str, Any]:
    """Drop a wrapper prefix (``module.`` from DataParallel, ``_orig_mod.`` from torch.compile, ...)
    when every key carries it and dropping it makes the keys match the model's exactly."""
    if set(state) == set(expected) or not state:
        return state
    first = {str(k).split(".", 1)[0] for k in state}
    if len(first) == 1 and all("." in str(k) for k in state):
        prefix = first.pop() + "."
        stripped = {str(k)[len(prefix):]: v for k, v in state.items()}
        if set(stripped) == set(expected):
            return stripped
    return state


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def diagnose(state: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """Why ``state`` does not load into a model whose state dict is ``expected`` (empty: it fits)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes, types = [], []
    for k, v in expected.items():
        got = state.get(k)
        if not (isinstance(got, torch.Tensor) and isinstance(v, torch.Tensor)):
            continue
        lazy = isinstance(v, (nn.parameter.UninitializedParameter, nn.parameter.UninitializedBuffer))
        if not lazy and tuple(got.shape) != tuple(v.shape):
            shapes.append(f"{k} expected {list(v.shape)} got {list(got.shape)}")
        elif (v.is_floating_point() or v.is_complex()) and not (got.is_floating_point() or got.is_complex()):
            # load_state_dict would cast the integers silently: not the weights of a trained model
            types.append(f"{k} expected {_dtype(v)} got {_dtype(got)}")
    out = []
    for keys, what in ((missing, "missing keys"), (unexpected, "unexpected keys"), (shapes, "shape mismatches"),
                       (types, "integer values for floating-point tensors")):
        if keys:
            out.append(listing(keys, what))
    return out
