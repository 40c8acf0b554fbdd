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
  suggestion; the original silently returned ``None``), and every name of :mod:`eqaudit.engine.distances`
  is accepted; ``'cross_entropy'`` keeps NaN/inf from ``log 0`` visible instead of replacing
  ``log 0`` by 0 (which scored a zero probability like a certain one);
* the result is always a 0-dim tensor (a zero tensor when no check is chosen, not the int ``0``);
* arguments the original took and then computed nonsense with are refused with a ``ValueError``
  (``TypeError`` for a result that is not a tensor) naming them: an infinite ``epsilon`` or
  ``lambda_eq``, ``bounds`` whose width overflows, ``n < 1`` (also when reassigned), points
  without the batch dimension, a model or transform returning a tuple or None, a transform
  changing the number of rows, an ``f_out`` whose shape differs from the model's output on
  ``f_in(x)``, and any failure of the model, a transform or the distance.

The penalty is computed by the evaluation core (:func:`eqaudit.engine.evaluate.evaluate_checks`),
each chosen check in turn, as the audit and the fine-tune penalty compute it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import nn

from transforms_zoo import SampleRNG, Transform

from ..engine.device import model_device_dtype
from ..engine.evaluate import evaluate_checks
from ..engine.forward import forward_once
from ..spec import CheckSpec
from .adapters import ArgumentNamer
from .arguments import (ParsedCheck, parse_bounds, parse_checks, parse_count, parse_dist, parse_num_funcs,
                        parse_shape, same_items)

__all__ = ["EquivarianceError", "EquivarianceRegularizer"]

TransformLike = Union[Callable[[torch.Tensor], torch.Tensor], Transform, str, dict, list]
DistLike = Union[int, float, str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
BoundsLike = Any  # [lo, hi], nested lists, a NumPy array or a tensor whose last axis is (lo, hi)


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
            ``'cross_entropy_logits'``, any name of :mod:`eqaudit.engine.distances` (``'l2'``,
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
            ``dist`` (with a did-you-mean), bad ``shape``, ``n``, ``num_funcs`` or ``bounds``; at a
            call, points that are not a batch of ``shape``, and a failure of the model, of a
            transform (``transforms[i]: f_in`` / ``f_out`` / ``f``) or of the distance (``dist``).
        TypeError: the model or a transform returned something other than a tensor.

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
        self._n = parse_count(n, "n", minimum=1)
        self.shape = shape  # type: ignore[assignment]  # the setter parses it
        self.num_funcs = num_funcs
        parse_num_funcs(num_funcs)
        self.transforms = transforms
        self.dist = dist
        self.bounds = bounds

    # -- the original's attributes, read on every call as the original does ---------------------
    # Reassigning one (``reg.dist = 1``, ``reg.transforms = [...]`` to anneal a weight) takes
    # effect on the next call and is validated at once (``n`` too); ``num_funcs`` is plain.
    _LIVE = frozenset({"shape", "transforms", "dist", "bounds", "n"})

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._LIVE:  # the property's setter, also for an nn.Module dist or a Parameter
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def n(self) -> int:
        """The number of random points per call (an integer >= 1)."""
        return self._n

    @n.setter
    def n(self, value: int) -> None:
        n = parse_count(value, "n", minimum=1)
        if self._bounds_src is not None:
            parse_bounds(self._bounds_src, self.shape, n)
        self._n = n

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @shape.setter
    def shape(self, value: Sequence[int] | int) -> None:
        shape = parse_shape(value)
        if self._bounds_src is not None:
            parse_bounds(self._bounds_src, shape, self.n)
        self._shape = shape

    @property
    def transforms(self) -> Any:
        """The check tuples, as given: replacing them, or changing the list or a tuple in place,
        takes effect on the next call."""
        return self._transforms

    @transforms.setter
    def transforms(self, value: Sequence[Sequence[Any]]) -> None:
        self._parsed = parse_checks(value)
        self._transforms = value

    @property
    def dist(self) -> DistLike:
        return self._dist

    @dist.setter
    def dist(self, value: DistLike) -> None:
        self._distance = parse_dist(value)
        self._dist = value

    @property
    def bounds(self) -> BoundsLike:
        return self._bounds_src

    @bounds.setter
    def bounds(self, value: BoundsLike) -> None:
        self._bounds, self._unit_box = parse_bounds(value, self.shape, self.n)
        # a copy: what reads as ``reg.bounds`` is what the points are drawn in
        self._bounds_src = value.detach().clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)

    @property
    def _checks(self) -> list[ParsedCheck]:
        """The parsed checks of the current ``transforms`` (parsed again only when an element,
        or an element of a tuple, is no longer the same object)."""
        snapshot, checks = self._parsed
        if not same_items(snapshot, self._transforms):
            self._parsed = parse_checks(self._transforms)
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
        device, dtype = model_device_dtype(self.model)
        x = self.sample_points(device=device, dtype=dtype) if inputs is None else self._points(inputs, device, dtype)
        chosen = self._choose()
        if not chosen:
            return torch.zeros((), device=device, dtype=dtype)
        namer = ArgumentNamer()
        y = forward_once(self.model, x, namer, "model")  # once, shared by all chosen checks
        checks = self._checks
        core = [CheckSpec(name=f"transforms[{i}]", input=c.f_in, output=c.f_out, both=c.both, distance=self._distance)
                for i, c in enumerate(checks)]
        rng = SampleRNG.for_range(0, 0, x.shape[0], x.device)  # the draws come from torch's generator
        evaluation = evaluate_checks(self.model, core, x, y, rng, namer, chosen=chosen, fuse=False,
                                     distance_dtype=None)
        total: torch.Tensor | None = None
        for i, result in zip(chosen, evaluation.checks):
            check = checks[i]
            term = check.weight * F.relu(result.errors.mean() - check.epsilon)
            total = term if total is None else total + term
        assert total is not None
        return total.reshape(())

    def _points(self, inputs: Any, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Given points as a batch ``(m, *shape)`` on the model's device (floating: its dtype)."""
        x = torch.as_tensor(inputs)
        if x.dim() == 0 or x.shape[0] == 0:
            raise ValueError(f"inputs must be a non-empty batch (m, *shape), got shape {tuple(x.shape)}")
        if tuple(x.shape[1:]) != self.shape:
            single = tuple(x.shape) == self.shape
            raise ValueError(f"inputs must be a batch of shape (m, *shape) = (m, {', '.join(map(str, self.shape))}), "
                             f"got shape {tuple(x.shape)}"
                             + (" (one sample without the batch dimension: use inputs.unsqueeze(0))" if single else ""))
        return x.to(device=device, dtype=dtype if x.is_floating_point() else None)

    # -- helpers (public: useful on their own) -----------------------------------------------------
    def sample_points(
        self, n: int | None = None, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """``n`` (default ``self.n``) points uniform in ``bounds``, shape ``(n, *shape)``, drawn with
        ``torch.rand`` on ``device`` in ``dtype`` (defaults: the model's)."""
        if device is None or dtype is None:
            mdev, mdt = model_device_dtype(self.model)
            device = mdev if device is None else device
            dtype = mdt if dtype is None else dtype
        n = self.n if n is None else parse_count(n, "n", minimum=1)
        full = (n, *self.shape)
        _check_range(self._bounds, dtype)
        u = torch.rand(full, device=device, dtype=dtype)
        if self._unit_box:
            return u
        b = torch.broadcast_to(self._bounds.to(device=device, dtype=dtype), (*full, 2))
        lo, hi = b[..., 0], b[..., 1]
        return u * (hi - lo) + lo

    def _choose(self) -> list[int]:
        """The indices of the checks this call evaluates, ascending."""
        m = len(self._checks)
        k = parse_num_funcs(self.num_funcs)
        k = m if k is None else min(k, m)
        if k >= m:
            return list(range(m))
        if k <= 0:
            return []
        return torch.randperm(m)[:k].sort().values.tolist()

    def extra_repr(self) -> str:
        return (
            f"shape={self.shape}, checks={len(self._checks)}, dist={self.dist!r}, n={self.n}, "
            f"num_funcs={self.num_funcs!r}, bounds={self.bounds!r}"
        )


#: The original package's class name.
EquivarianceRegularizer = EquivarianceError


def _check_range(bounds: torch.Tensor, dtype: torch.dtype) -> None:
    """Refuse bounds whose ends or width overflow ``dtype`` (the points would be inf or NaN)."""
    if not dtype.is_floating_point or dtype == torch.float64:
        return
    top = torch.finfo(dtype).max
    if bool(bounds.abs().max() > top) or bool((bounds[..., 1] - bounds[..., 0]).max() > top):
        raise ValueError(f"bounds: the box overflows the model's dtype {dtype} (largest value {top:.3g}); "
                         "use a narrower box")
