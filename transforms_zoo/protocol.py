"""The transform protocol: :class:`Transform` (declared parameters, ``sample`` then ``apply``)
and :class:`Inverted`, the inverse of a transform drawn with the same parameters.

A transform separates *drawing* its parameters from *applying* them (as kornia does):
``params = t.sample(rng)`` draws one set of parameters per sample from a :class:`SampleRNG`;
``t.apply(x, params)`` is a pure function of its arguments. Applying the same ``params`` to a model
input and to a model output replays the same random transform on both, which is what ``both:``
checks need.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from transforms_zoo.errors import TransformError, did_you_mean
from transforms_zoo.params import Param
from transforms_zoo.random import SampleRNG


class Transform:
    """Base class of every zoo transform.

    Subclasses set ``name``, ``summary`` and ``params`` (a tuple of :class:`Param`), and implement
    :meth:`apply` and, when random, :meth:`sample`. Constructor keyword arguments are the declared
    parameters; they and the defaults are parsed by their :class:`Param` (the one place values are
    parsed) and stored as attributes of the same name, then :meth:`validate` checks them together.
    Transforms built from Python objects (other transforms, functions) declare those as
    ``arguments``: parsed the same way, but not YAML parameters (not documented, not swept).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    #: Constructor arguments that are Python objects, not YAML values (compositions, inverses).
    arguments: ClassVar[tuple[Param, ...]] = ()
    #: What the transform acts on, for the docs ("image (..., H, W)", "points (..., 3)").
    acts_on: ClassVar[str] = "any tensor"

    def __init__(self, **kwargs: Any) -> None:
        declared = {p.name: p for p in (*self.params, *self.arguments)}
        for key in kwargs:
            if key not in declared:
                raise TransformError(
                    f"unknown parameter '{key}' for transform '{self.name}'",
                    key=key,
                    hint=did_you_mean(key, declared) or "it takes no parameters",
                )
        for p in declared.values():
            if p.required and p.name not in kwargs:
                raise TransformError(f"transform '{self.name}' needs parameter '{p.name}'", key=p.name)
            try:
                value = p.value(kwargs)
            except ValueError as exc:
                raise TransformError(str(exc), key=p.name) from None
            setattr(self, p.name, value)
        self._given = {p.name: kwargs[p.name] for p in self.params if p.name in kwargs}  # as written, for describe()
        self.validate()

    def validate(self) -> None:
        """Cross-parameter checks of the parsed values; raise :class:`TransformError`."""

    # -- what subclasses implement ------------------------------------------------------------
    @property
    def is_random(self) -> bool:
        """Whether :meth:`sample` draws anything (False for fixed transforms)."""
        return False

    def sample(self, rng: SampleRNG) -> Any:
        """Draw the parameters of ``rng.n`` samples (None for fixed transforms)."""
        return None

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        """Apply to a batch ``x`` of shape ``(n, ...)`` with the parameters drawn for those rows."""
        raise NotImplementedError

    def lie_generator_error(self) -> TransformError | None:
        """For transforms with a ``lie_path``: why its generator is zero (a path that stands still,
        such as a shift by (0, 0), whose derivative would be 0 or taken along a made-up direction),
        as an error to raise; None when the path moves."""
        return None

    def _require_lie_generator(self) -> None:
        """Guard of ``lie_path``: refuse a path whose generator is zero."""
        error = self.lie_generator_error()
        if error is not None:
            raise error

    def _require_fixed(self) -> None:
        """Guard of ``apply(x, None)``: a random transform has no fixed parameters to act with
        (it would otherwise act silently with the low end of its range)."""
        if self.is_random:
            raise TransformError(f"{self.name!r} is random: pass the parameters drawn by sample()")

    # -- conveniences -------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, params: Any = None) -> torch.Tensor:
        """Apply with ``params``, or with a fresh draw from torch's global generator."""
        if params is None and self.is_random:
            params = self.sample(SampleRNG.from_torch(x.shape[0], x.device))
        return self.apply(x, params)

    def describe(self) -> str:
        """Short text for reports: ``shift(dx=1, dy=0)``."""
        if not self._given:
            return self.name
        args = ", ".join(f"{k}={_fmt(v)}" for k, v in self._given.items())
        return f"{self.name}({args})"

    def __repr__(self) -> str:
        return f"<transform {self.describe()}>"


def _fmt(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return str(v)


# -- parsers of the parameters of transforms built from other transforms (not YAML values) --------
def a_transform(v: Any) -> Transform:
    """A :class:`Transform` instance."""
    if not isinstance(v, Transform):
        raise ValueError(f"expected a transform, got {type(v).__name__}")
    return v


def transforms(v: Any) -> tuple[Transform, ...]:
    """A sequence of :class:`Transform` instances, as a tuple."""
    if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
        raise ValueError(f"expected a sequence of transforms, got {type(v).__name__}")
    return tuple(a_transform(t) for t in v)


def a_callable(v: Any) -> Callable[..., Any]:
    """Any callable."""
    if not callable(v):
        raise ValueError(f"expected a callable, got {type(v).__name__}")
    return v


class Inverted(Transform):
    """The inverse of ``base``: draws ``base``'s parameters and applies ``fn(x, params)``."""

    name = "inverse"
    summary = "the inverse of another transform, with the same parameters"
    arguments = (Param("base", a_transform, doc="the transform undone"),
                 Param("fn", a_callable, doc="fn(x, params): undoes base drawn with params"))

    def __init__(self, base: Transform, fn: Callable[[torch.Tensor, Any], torch.Tensor]) -> None:
        super().__init__(base=base, fn=fn)

    @property
    def is_random(self) -> bool:
        return self.base.is_random

    def sample(self, rng: Any) -> Any:
        return self.base.sample(rng)

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        return self.fn(x, params)

    def inverse(self) -> Transform:
        return self.base

    def describe(self) -> str:
        return f"inverse({self.base.describe()})"
