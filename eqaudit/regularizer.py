"""A differentiable equivariance penalty: the drop-in replacement of ``equivariance-regularizer``.

>>> reg = EquivarianceError(model, (1, 28, 28), [("identity", "rot90", 0.0, 1.0)], dist=2, n=64)
>>> loss = task_loss + reg()          # or reg(x) at given points

For each chosen check ``(f_out, f_in, epsilon, lambda_eq)`` the penalty is
``lambda_eq * relu(error - epsilon)`` with ``error = mean_x dist(f_out(model(x)), model(f_in(x)))``,
and the result is the sum over the chosen checks — the meaning of the original package.

Differences from ``equivariance_regularizer.EquivarianceRegularizer`` 0.1.1 (bug fixes, and stricter
argument checks):

* ``model(x)`` is computed once per call and shared by all chosen checks (the original recomputed
  it for every check);
* a 3-tuple ``(f, epsilon, lambda_eq)`` applies ``f`` to the inputs and to the outputs separately
  with the same random draw; the original concatenated inputs and outputs, which required equal
  shapes and overwrote the inputs, so every later check in the same call saw garbage;
* a 3-tuple's distance takes its arguments in the 4-tuple's order, ``dist(f(model(x)),
  model(f(x)))``; the original swapped them for 3-tuples only, which changes the value of an
  asymmetric callable distance (the built-in ones are symmetric);
* ``epsilon`` and ``lambda_eq`` must be ``>= 0`` and an l_p distance needs ``p >= 1`` (a norm);
  the original took any number;
* checks are chosen *without* replacement with torch's global generator (``torch.randperm``, so
  ``torch.manual_seed`` governs it); the original drew *with* replacement from Python's ``random``;
* calling with a tensor does not change ``self.n`` (the original overwrote it);
* points are drawn on the model's device in its floating-point dtype (a float64 model gets float64
  points), models without parameters work, and ``bounds`` may be a list, nested lists, a NumPy array
  or a tensor (the original crashed on a tensor and on parameter-free models);
* ``dist`` is validated when the regularizer is built (unknown names are a ``ValueError`` with a
  suggestion; the original silently returned ``None``), and every name of :mod:`eqaudit.audit.distances`
  is accepted; ``'cross_entropy'`` keeps NaN/inf from ``log 0`` visible instead of replacing
  ``log 0`` by 0 (which scored a zero probability like a certain one);
* the result is always a 0-dim tensor (a zero tensor when no check is chosen, not the int ``0``).
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import nn

from transforms_zoo import SampleRNG, Transform, TransformError
from transforms_zoo import build as build_transform

from .audit.distances import _UserDistance, parse_distance
from .errors import EqauditError

__all__ = ["EquivarianceError", "EquivarianceRegularizer"]

TransformLike = Union[Callable[[torch.Tensor], torch.Tensor], Transform, str, Mapping[str, Any], list]
DistLike = Union[int, float, str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
BoundsLike = Any  # [lo, hi], nested lists, a NumPy array or a tensor whose last axis is (lo, hi)


@dataclass(frozen=True)
class _Check:
    """One parsed transform tuple: ``both`` is set for 3-tuples, ``f_out``/``f_in`` for 4-tuples."""

    f_out: Callable[[torch.Tensor], torch.Tensor] | Transform | None
    f_in: Callable[[torch.Tensor], torch.Tensor] | Transform | None
    both: Callable[[torch.Tensor], torch.Tensor] | Transform | None
    epsilon: float | torch.Tensor
    weight: float | torch.Tensor


class EquivarianceError(nn.Module):
    """Monte Carlo estimate of how far ``model`` is from equivariance, as a differentiable penalty.

    Args:
        model: the network (any callable on batches; usually an ``nn.Module``). It is registered
            as a submodule, as in the original, so ``reg.to(device)`` moves it too.
        shape: the shape of one input sample, without the batch dimension, e.g. ``(1, 28, 28)``.
        transforms: a list of checks. Each is ``(f_out, f_in, epsilon, lambda_eq)`` — the model is
            compared as ``f_out(model(x))`` against ``model(f_in(x))`` — or ``(f, epsilon,
            lambda_eq)`` when the same (possibly random) transform acts on both sides; the same
            random draw is then applied to the inputs and to the outputs. A transform is any
            callable on batches, a :class:`transforms_zoo.Transform` (its parameters are drawn once
            per call and applied to both sides), or a zoo name / mapping / list understood by
            :func:`transforms_zoo.build` (``"rot90"``, ``{"shift": {"dx": 1}}``). For a plain
            random callable in a 3-tuple, torch's RNG state (CPU, and CUDA of the tensors' devices)
            is saved before applying it to the inputs and restored before applying it to the
            outputs, so it replays the same draw as long as it draws the same way for both (e.g.
            one value per row). ``epsilon >= 0`` is the hinge, ``lambda_eq >= 0`` the weight.
        dist: how two batches of outputs are compared, per sample over the flattened output and
            then averaged: a number ``p >= 1`` (the l_p norm), ``'inf'``, ``'cross_entropy'``,
            ``'cross_entropy_logits'``, any name of :mod:`eqaudit.audit.distances` (``'l2'``,
            ``'relative_l2'``, ``'kl_logits'``, ``'lp:3'``...), or a callable ``dist(a, b)``
            returning a scalar or one value per row, of which the mean is taken (the original's
            ``torch.mean(dist(a, b))``). Computed in the model output's dtype.
        n: the number of random points per call of ``reg()``.
        num_funcs: how many checks each call evaluates, chosen at random *without* replacement
            with ``torch.randperm`` (``torch.manual_seed`` governs it); ``num_funcs >=
            len(transforms)`` (or ``"all"`` / ``None``) evaluates all of them, in order. The
            original drew with replacement, so a check could count twice in one call.
        bounds: the input box: ``[lo, hi]`` for every element, or nested lists / an array / a
            tensor broadcast to ``(n,) + shape + (2,)`` whose last axis holds ``(lo, hi)`` per
            element (e.g. ``[[[[0, 1]]], [[[-1, 1]]]]``, shape ``(2, 1, 1, 2)``, for the two channels of
            images of shape ``(2, H, W)``). Points are drawn uniformly with ``torch.rand`` on the
            model's device.

    Raises:
        ValueError: a malformed check (the message names ``transforms[i]``), an unknown or invalid
            ``dist`` (with a did-you-mean), bad ``shape``, ``n``, ``num_funcs`` or ``bounds``.

    ``transforms``, ``dist``, ``bounds`` and ``shape`` take effect on the next call when reassigned
    (``reg.transforms = [(f, f, eps, new_weight)]`` to anneal a weight), as in the original, and
    are validated at once (``ValueError``, the old value kept). ``transforms`` is also read again
    when its list or a tuple in it is changed in place; ``bounds`` is copied when assigned.

    Note: the model is called on ``x`` and on each ``f_in(x)`` separately, in whatever mode it is
    in; in training mode dropout draws differ between the calls (as in the original), so put such
    layers in eval mode if they should not count as non-equivariance.
    """

    def __init__(
        self,
        model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
        shape: Sequence[int] | int,
        transforms: Sequence[Sequence[Any]],
        dist: DistLike = 2,
        n: int = 1,
        num_funcs: int | str | None = 1,
        bounds: BoundsLike = [0, 1],  # noqa: B006  (the original's signature; never mutated)
    ) -> None:
        super().__init__()
        if not callable(model):
            raise ValueError(f"model must be callable (an nn.Module), got {type(model).__name__}")
        self.model = model
        self._bounds_src: Any = None
        self.shape = shape  # type: ignore[assignment]  # the setter parses it
        self.n: int = _parse_count(n, "n", minimum=1)
        self.num_funcs = num_funcs
        _parse_num_funcs(num_funcs)
        self.transforms = transforms
        self.dist = dist
        self.bounds = bounds

    # -- the original's attributes, read on every call as the original does ---------------------
    # Reassigning one (``reg.dist = 1``, ``reg.transforms = [...]`` to anneal a weight) takes
    # effect on the next call and is validated at once; ``n`` and ``num_funcs`` are plain.
    _LIVE = frozenset({"shape", "transforms", "dist", "bounds"})

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._LIVE:  # the property's setter, also for an nn.Module dist or a Parameter
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @shape.setter
    def shape(self, value: Sequence[int] | int) -> None:
        shape = _parse_shape(value)
        if self._bounds_src is not None:
            _parse_bounds(self._bounds_src, shape, self.n)
        self._shape = shape

    @property
    def transforms(self) -> Any:
        """The check tuples, as given: replacing them, or changing the list or a tuple in place,
        takes effect on the next call."""
        return self._transforms

    @transforms.setter
    def transforms(self, value: Sequence[Sequence[Any]]) -> None:
        self._parsed = _parse_checks(value)
        self._transforms = value

    @property
    def dist(self) -> DistLike:
        return self._dist

    @dist.setter
    def dist(self, value: DistLike) -> None:
        self._dist_fn = _parse_dist(value)
        self._dist = value

    @property
    def bounds(self) -> BoundsLike:
        return self._bounds_src

    @bounds.setter
    def bounds(self, value: BoundsLike) -> None:
        self._bounds, self._unit_box = _parse_bounds(value, self.shape, self.n)
        # a copy: what reads as ``reg.bounds`` is what the points are drawn in
        self._bounds_src = value.detach().clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)

    @property
    def _checks(self) -> list[_Check]:
        """The parsed checks of the current ``transforms`` (parsed again only when an element,
        or an element of a tuple, is no longer the same object)."""
        snapshot, checks = self._parsed
        if not _same_items(snapshot, self._transforms):
            self._parsed = _parse_checks(self._transforms)
            checks = self._parsed[1]
        return checks

    # -- the penalty ------------------------------------------------------------------------------
    def forward(self, inputs: torch.Tensor | None = None) -> torch.Tensor:
        """The penalty ``sum over chosen checks of lambda_eq * relu(error - epsilon)``.

        Args:
            inputs: a batch ``(m, *shape)`` of points; ``None`` draws ``self.n`` uniform points in
                ``bounds``. Given points are moved to the model's device (and, when floating
                point, to its dtype); ``self.n`` is left unchanged.

        Returns:
            A 0-dim tensor in the model output's dtype, differentiable with respect to the model's
            parameters (and to ``inputs`` when they require grad); a zero tensor on the model's
            device when no check is chosen (``num_funcs=0`` or no transforms).
        """
        device, dtype = _device_dtype(self.model)
        if inputs is None:
            x = self.sample_points(device=device, dtype=dtype)
        else:
            x = torch.as_tensor(inputs)
            if x.dim() == 0 or x.shape[0] == 0:
                raise ValueError(f"inputs must be a non-empty batch (m, *shape), got shape {tuple(x.shape)}")
            x = x.to(device=device, dtype=dtype if x.is_floating_point() else None)
        chosen = self._choose()
        if not chosen:
            return torch.zeros((), device=device, dtype=dtype)
        y = self.model(x)  # once, shared by all chosen checks
        total: torch.Tensor | None = None
        for check in chosen:
            if check.both is not None:
                a, x_t = _apply_both(check.both, x, y)
            else:
                assert check.f_in is not None and check.f_out is not None
                x_t = _apply_one(check.f_in, x)
                a = _apply_one(check.f_out, y)
            error = self._dist_fn(a, self.model(x_t))
            term = check.weight * F.relu(error - check.epsilon)
            total = term if total is None else total + term
        assert total is not None
        return total.reshape(())

    # -- helpers (public: useful on their own) -----------------------------------------------------
    def sample_points(
        self, n: int | None = None, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """``n`` (default ``self.n``) points uniform in ``bounds``, shape ``(n, *shape)``, drawn with
        ``torch.rand`` on ``device`` in ``dtype`` (defaults: the model's)."""
        if device is None or dtype is None:
            mdev, mdt = _device_dtype(self.model)
            device = mdev if device is None else device
            dtype = mdt if dtype is None else dtype
        n = self.n if n is None else _parse_count(n, "n", minimum=1)
        full = (n, *self.shape)
        u = torch.rand(full, device=device, dtype=dtype)
        if self._unit_box:
            return u
        b = torch.broadcast_to(self._bounds.to(device=device, dtype=dtype), (*full, 2))
        lo, hi = b[..., 0], b[..., 1]
        return u * (hi - lo) + lo

    def _choose(self) -> list[_Check]:
        m = len(self._checks)
        k = _parse_num_funcs(self.num_funcs)
        k = m if k is None else min(k, m)
        if k >= m:
            return list(self._checks)
        if k <= 0:
            return []
        idx = torch.randperm(m)[:k].sort().values.tolist()
        return [self._checks[i] for i in idx]

    def extra_repr(self) -> str:
        return (
            f"shape={self.shape}, checks={len(self._checks)}, dist={self.dist!r}, n={self.n}, "
            f"num_funcs={self.num_funcs!r}, bounds={self.bounds!r}"
        )


#: The original package's class name.
EquivarianceRegularizer = EquivarianceError


# -- applying transforms ------------------------------------------------------------------------------
def _apply_one(f: Callable[[torch.Tensor], torch.Tensor] | Transform, t: torch.Tensor) -> torch.Tensor:
    if isinstance(f, Transform):
        params = f.sample(SampleRNG.from_torch(t.shape[0], t.device)) if f.is_random else None
        return f.apply(t, params)
    return f(t)


def _apply_both(
    f: Callable[[torch.Tensor], torch.Tensor] | Transform, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f(y), f(x))`` with the same random draw on both sides."""
    if isinstance(f, Transform):
        params = f.sample(SampleRNG.from_torch(x.shape[0], x.device)) if f.is_random else None
        return f.apply(y, params), f.apply(x, params)
    cuda = sorted({t.device for t in (x, y) if t.device.type == "cuda"}, key=str)
    before = _rng_state(cuda)
    x_t = f(x)
    after = _rng_state(cuda)
    try:
        _set_rng_state(cuda, before)
        y_t = f(y)
    finally:
        _set_rng_state(cuda, after)  # the global stream advances once, as for one application
    return y_t, x_t


def _rng_state(cuda: list[torch.device]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in cuda]


def _set_rng_state(cuda: list[torch.device], state: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    torch.set_rng_state(state[0])
    for d, s in zip(cuda, state[1]):
        torch.cuda.set_rng_state(s, d)


def _device_dtype(model: Any) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype of the model's first floating parameter (else buffer); a
    model without tensors gets the CPU and ``torch.get_default_dtype()``."""
    device: torch.device | None = None
    if isinstance(model, nn.Module):
        for group in (model.parameters(), model.buffers()):
            for t in group:
                if device is None:
                    device = t.device
                if t.is_floating_point():
                    return t.device, t.dtype
    return (device or torch.device("cpu")), torch.get_default_dtype()


# -- argument parsing ----------------------------------------------------------------------------------
def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _parse_shape(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        out = tuple(int(s) for s in shape)
        ok = all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in shape)
    except TypeError:
        ok = False
    if not ok or any(s < 0 for s in out):
        raise ValueError(f"shape must be a tuple of non-negative ints (one sample, no batch dimension), got {shape!r}")
    return out


def _parse_count(v: Any, name: str, minimum: int) -> int:
    if not isinstance(v, numbers.Integral) or isinstance(v, bool) or int(v) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def _parse_num_funcs(v: Any) -> int | None:
    """``None`` means all checks."""
    if v is None or v == "all":
        return None
    if not isinstance(v, numbers.Integral) or isinstance(v, bool) or int(v) < 0:
        raise ValueError(f"num_funcs must be an integer >= 0 or 'all', got {v!r}")
    return int(v)


def _parse_weight(i: int, v: Any, name: str) -> float | torch.Tensor:
    if isinstance(v, torch.Tensor):
        if v.numel() != 1 or not v.is_floating_point():
            raise ValueError(f"transforms[{i}]: {name} must be a number, got a tensor of shape {tuple(v.shape)}")
        bad = not bool(v.detach() >= 0)
    elif _is_real(v):
        v = float(v)
        bad = not (v >= 0)
    else:
        raise ValueError(f"transforms[{i}]: {name} must be a number >= 0, got {v!r}")
    if bad:
        raise ValueError(f"transforms[{i}]: {name} must be >= 0, got {v!r}")
    return v


def _parse_transform(i: int, f: Any, role: str) -> Callable[[torch.Tensor], torch.Tensor] | Transform:
    if isinstance(f, Transform):
        return f
    if isinstance(f, (str, Mapping, list)):
        try:
            return build_transform(f)
        except TransformError as exc:
            raise ValueError(f"transforms[{i}]: {role}: {exc}") from None
    if callable(f):
        return f
    raise ValueError(
        f"transforms[{i}]: {role} must be a callable, a transforms_zoo Transform or a zoo name, "
        f"got {type(f).__name__}"
    )


def _parse_checks(transforms: Any) -> tuple[list[tuple[Any, ...]], list[_Check]]:
    """``(snapshot, checks)``: the tuples' items as they are now, and the parsed checks."""
    if isinstance(transforms, (str, bytes, Mapping)) or not isinstance(transforms, Sequence):
        raise ValueError("transforms must be a list of (f_out, f_in, epsilon, lambda_eq) or (f, epsilon, lambda_eq) tuples")
    checks = [_parse_check(i, t) for i, t in enumerate(transforms)]
    return [tuple(t) for t in transforms], checks


def _same_items(snapshot: list[tuple[Any, ...]], transforms: Any) -> bool:
    """Whether ``transforms`` still holds the very objects of ``snapshot``."""
    if not isinstance(transforms, Sequence) or len(transforms) != len(snapshot):
        return False
    for old, t in zip(snapshot, transforms):
        if not isinstance(t, Sequence) or len(t) != len(old) or any(a is not b for a, b in zip(old, t)):
            return False
    return True


def _parse_check(i: int, t: Any) -> _Check:
    if isinstance(t, (str, bytes, Mapping)) or not isinstance(t, Sequence):
        raise ValueError(
            f"transforms[{i}]: expected a tuple (f_out, f_in, epsilon, lambda_eq) or (f, epsilon, lambda_eq), "
            f"got {type(t).__name__}"
        )
    if len(t) == 4:
        f_out, f_in, eps, w = t
        return _Check(
            f_out=_parse_transform(i, f_out, "f_out"),
            f_in=_parse_transform(i, f_in, "f_in"),
            both=None,
            epsilon=_parse_weight(i, eps, "epsilon"),
            weight=_parse_weight(i, w, "lambda_eq"),
        )
    if len(t) == 3:
        f, eps, w = t
        return _Check(
            f_out=None,
            f_in=None,
            both=_parse_transform(i, f, "f"),
            epsilon=_parse_weight(i, eps, "epsilon"),
            weight=_parse_weight(i, w, "lambda_eq"),
        )
    raise ValueError(
        f"transforms[{i}]: expected 4 elements (f_out, f_in, epsilon, lambda_eq) or 3 (f, epsilon, lambda_eq), "
        f"got {len(t)}"
    )


def _parse_dist(dist: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A function of two output batches returning the mean distance (0-dim)."""
    if isinstance(dist, float) and math.isnan(dist):
        raise ValueError("dist: p must be >= 1, got nan")
    try:
        parsed = parse_distance(dist)
    except EqauditError as err:
        raise ValueError(f"dist: {err}") from None
    fn = parsed.fn
    if isinstance(fn, _UserDistance):
        user = fn.fn  # the original's meaning: torch.mean(dist(a, b)), scalar or per-row

        def mean_user(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            out = user(a, b)
            if not isinstance(out, torch.Tensor):
                out = torch.as_tensor(out, dtype=a.dtype, device=a.device)
            return torch.mean(out)

        return mean_user

    def mean_named(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return fn(a, b).mean()

    return mean_named


def _parse_bounds(bounds: Any, shape: tuple[int, ...], n: int) -> tuple[torch.Tensor, bool]:
    """``(tensor with last axis (lo, hi), whether it is exactly the unit box)``."""
    try:
        if isinstance(bounds, torch.Tensor):
            b = bounds.detach().to(device="cpu", dtype=torch.float64)
        else:
            b = torch.as_tensor(bounds, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"bounds must be [lo, hi] or nested lists/an array with a last axis of 2: {exc}") from None
    if b.dim() == 0 or b.shape[-1] != 2:
        raise ValueError(
            f"bounds must have a last axis of size 2 holding (lo, hi), got shape {tuple(b.shape)}"
        )
    try:
        torch.broadcast_shapes(tuple(b.shape), (n, *shape, 2))
    except RuntimeError:
        raise ValueError(
            f"bounds of shape {tuple(b.shape)} do not broadcast to (n,) + shape + (2,) = {(n, *shape, 2)}"
        ) from None
    if not torch.isfinite(b).all():
        raise ValueError("bounds must be finite")
    if (b[..., 0] > b[..., 1]).any():
        raise ValueError("bounds: lo > hi somewhere")
    unit = bool((b[..., 0] == 0).all() and (b[..., 1] == 1).all())
    return b, unit
