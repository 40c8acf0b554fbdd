"""The regularizer's arguments in the evaluation core's terms: a user's callables as transforms
that draw from torch's global generator (as the original package did), its distance as a
per-row :class:`Distance`, and failures as a ``ValueError``/``TypeError`` naming the argument."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

from transforms_zoo import SampleRNG, Transform

from ..engine.distances import Distance, _UserDistance


def _label(f: Any) -> str:
    return getattr(f, "__name__", type(f).__name__)


class PlainTransform(Transform):
    """A user's function on batches, applied as it is (its randomness is its own)."""

    name = "callable"

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        return self.fn(x)

    def describe(self) -> str:
        return _label(self.fn)


class _Replay:
    """torch's RNG state before and after the first application of a random callable."""

    def __init__(self) -> None:
        self.before: Any = None
        self.after: Any = None


class ReplayedTransform(PlainTransform):
    """A 3-tuple's plain callable: the first application (the inputs) runs on torch's global
    generator; the second (the outputs) replays the same draw, then the generator is left where
    the first application left it, so the global stream advances once."""

    @property
    def is_random(self) -> bool:
        return True

    def sample(self, rng: SampleRNG) -> _Replay:
        return _Replay()

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        cuda = [x.device] if x.device.type == "cuda" else []
        if params.before is None:
            params.before = _rng_state(cuda)
            out = self.fn(x)
            params.after = _rng_state(cuda)
            return out
        _set_rng_state(cuda, params.before)
        try:
            return self.fn(x)
        finally:
            _set_rng_state(cuda, params.after)


class TorchDrawn(Transform):
    """A zoo transform whose parameters are drawn from torch's global generator at each call
    (``SampleRNG.from_torch``), so that ``torch.manual_seed`` governs them."""

    def __init__(self, inner: Transform) -> None:
        super().__init__()
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]

    @property
    def is_random(self) -> bool:
        return self.inner.is_random

    def sample(self, rng: SampleRNG) -> Any:
        return self.inner.sample(SampleRNG.from_torch(rng.n, rng.device)) if self.inner.is_random else None

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        return self.inner.apply(x, params)

    def describe(self) -> str:
        return self.inner.describe()


def _rng_state(cuda: list[torch.device]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in cuda]


def _set_rng_state(cuda: list[torch.device], state: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    torch.set_rng_state(state[0])
    for d, s in zip(cuda, state[1]):
        torch.cuda.set_rng_state(s, d)


def per_row_distance(parsed: Distance) -> Distance:
    """The regularizer's distance: a built-in one per row; a user's callable as it returns
    (a scalar or one value per row; the penalty takes the mean, the original's
    ``torch.mean(dist(a, b))``)."""
    fn = parsed.fn
    if not isinstance(fn, _UserDistance):
        return parsed
    user = fn.fn

    def as_returned(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = user(a, b)
        if not isinstance(out, torch.Tensor):
            out = torch.as_tensor(out, dtype=a.dtype, device=a.device)
        return out.reshape(-1)

    return Distance(parsed.name, as_returned)  # the penalty evaluates each check alone: never batched


_ROLE = {"input": "f_in", "output": "f_out", "both": "f", "group": "f", "mask": "f", "mode": "f"}


class ArgumentNamer:
    """The evaluation core's locator for the regularizer: an error at ``checks[i].input`` becomes
    a ``ValueError`` naming ``transforms[i]: f_in``; a non-tensor result is a ``TypeError``."""

    file = None

    def error(self, key: str | None, message: str, hint: str | None = None) -> Exception:
        where = key or "model"
        m = re.fullmatch(r"checks\[(\d+)\]\.(\w+)", key or "")
        if m:
            where = "dist" if m.group(2) == "distance" else f"transforms[{m.group(1)}]: {_ROLE.get(m.group(2), 'f')}"
        text = f"{where}: {message}" + (f" ({hint})" if hint else "")
        wrong_type = "expected a tensor" in message or "returned NoneType" in message
        return TypeError(text) if wrong_type else ValueError(text)
