"""Transforms built from their YAML form: compositions (lists), user callables
(``module:callable``), and registered names with their parameters."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from transforms_zoo._resolve import ReferenceError_, is_reference, resolve_reference
from transforms_zoo.errors import TransformError
from transforms_zoo.params import Param
from transforms_zoo.protocol import Transform, a_callable, transforms
from transforms_zoo.random import SampleRNG
from transforms_zoo.registry import get


def _text(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {type(v).__name__}")
    return v


class Compose(Transform):
    """Several transforms applied left to right; each draws from its own stream."""

    name = "compose"
    summary = "apply a list of transforms left to right (write a YAML list)"
    arguments = (Param("parts", transforms, doc="the transforms, applied left to right"),)

    def __init__(self, parts: Sequence[Transform]) -> None:
        super().__init__(parts=parts)

    @property
    def is_random(self) -> bool:
        return any(p.is_random for p in self.parts)

    def sample(self, rng: SampleRNG) -> tuple[Any, ...]:
        return tuple(p.sample(rng.child(i)) for i, p in enumerate(self.parts))

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        if params is None:
            params = (None,) * len(self.parts)
        for part, p in zip(self.parts, params):
            x = part.apply(x, p)
        return x

    def describe(self) -> str:
        return " then ".join(p.describe() for p in self.parts) if self.parts else "identity"


class CallableTransform(Transform):
    """A user function ``f(x) -> x'`` on batches, named in a spec as ``"module:callable"``.

    Its randomness cannot be keyed per sample, so for ``both:`` it is replayed instead: ``sample``
    draws one seed per call and ``apply`` runs ``f`` under that seed, giving the same draw on
    both sides. Write a :class:`Transform` subclass for per-sample reproducible draws.
    """

    name = "callable"
    summary = "a user function on batches, given as 'package.module:callable' or 'file.py:callable'"

    arguments = (Param("fn", a_callable, doc="the function on batches"),
                 Param("ref", _text, doc="the reference it was named by, for reports"))

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], ref: str) -> None:
        super().__init__(fn=fn, ref=ref)

    @property
    def is_random(self) -> bool:
        return True

    def sample(self, rng: SampleRNG) -> int:
        # One seed for this batch of rows, derived from the keyed stream (first row's key).
        if rng.n == 0:
            return 0
        return int(rng.integers(0, 2**31)[0].item())

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if params is not None:
                torch.manual_seed(int(params))
            return self.fn(x)

    def describe(self) -> str:
        return self.ref




def build(config: Any, *, base_dir: str | None = None) -> Transform:
    """Build a transform from its YAML form.

    Accepted forms: a zoo name (``"rot90"``), a one-key mapping ``{name: {param: value}}``, a list
    of these (composition, applied left to right), or ``"package.module:callable"`` for user code
    (a function on batches, a :class:`Transform` subclass or instance). Errors are
    :class:`TransformError` whose ``key`` is the path below ``config`` (``rotate.degrees``,
    ``[1].shift.dx``).
    """
    if isinstance(config, list):
        return _build_list(config, base_dir)
    if isinstance(config, str):
        if is_reference(config):
            return _build_reference(config, base_dir)
        return _construct(get(config), {}, config)
    if isinstance(config, dict):
        return _build_mapping(config)
    raise TransformError(
        f"a transform is a name, a {{name: {{params}}}} mapping, a list or 'module:callable'; got {config!r}"
    )


def _build_list(config: list, base_dir: str | None) -> Transform:
    if not config:
        raise TransformError("an empty list composes no transform", hint="write 'identity' if none is meant")
    parts = []
    for i, item in enumerate(config):
        try:
            parts.append(build(item, base_dir=base_dir))
        except TransformError as exc:
            exc.key = f"[{i}]" + ("." + exc.key if exc.key and not exc.key.startswith("[") else exc.key or "")
            raise
    return parts[0] if len(parts) == 1 else Compose(parts)


def _build_reference(config: str, base_dir: str | None) -> Transform:
    """User code: a Transform instance, a Transform subclass (built without arguments) or a
    function on batches."""
    try:
        obj = resolve_reference(config, base_dir)
    except ReferenceError_ as exc:
        raise TransformError(str(exc)) from None
    if isinstance(obj, Transform):
        return obj
    if isinstance(obj, type) and issubclass(obj, Transform):
        try:
            return obj()
        except TransformError:
            raise
        except Exception as exc:
            raise TransformError(f"constructing {config} failed: {exc}") from None
    if not callable(obj):
        raise TransformError(f"'{config}' is not callable")
    return CallableTransform(obj, config)


def _build_mapping(config: dict) -> Transform:
    if len(config) != 1:
        raise TransformError(
            f"a transform mapping has exactly one key (the transform's name), got {len(config)}: "
            + ", ".join(map(str, config)),
            hint="write a list to compose several transforms",
        )
    ((name, kwargs),) = config.items()
    if not isinstance(name, str):
        raise TransformError(f"transform name must be a string, got {name!r}")
    try:
        cls = get(name)
    except TransformError as exc:
        exc.key = name
        raise
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict):
        raise TransformError(
            f"parameters of '{name}' must be a mapping, got {type(kwargs).__name__}",
            key=name,
            hint=f"write {{{name}: {{param: value}}}}",
        )
    return _construct(cls, {str(k): v for k, v in kwargs.items()}, name)


def _construct(cls: type[Transform], kwargs: dict[str, Any], name: str) -> Transform:
    """``cls(**kwargs)``, its errors placed below ``name``."""
    try:
        return cls(**kwargs)
    except TransformError as exc:
        exc.key = f"{name}.{exc.key}" if exc.key else name
        raise
