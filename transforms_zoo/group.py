"""Inverses of zoo transforms (and, below, their finite groups and one-parameter paths).

A transform may define ``inverse(self) -> Transform | None``: a transform that, applied with the
SAME parameters drawn by ``self.sample``, undoes ``self`` (``rot90 k`` -> ``-k``, ``shift`` ->
``-dx, -dy``, ``rotate`` -> ``-degrees``, flips are their own inverse, ``rotate3d R`` -> ``R^T``,
``permute`` -> the inverse permutation). :func:`inverse_of` also handles compositions.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import torch

from transforms_zoo.builder import Compose, build
from transforms_zoo.errors import TransformError
from transforms_zoo.image import HFlip, Identity, Rot90
from transforms_zoo.interpolate import Rotate
from transforms_zoo.params import Param, boolean
from transforms_zoo.protocol import Inverted, Transform, a_transform, transforms
from transforms_zoo.random import SampleRNG
from transforms_zoo.registry import get
from transforms_zoo.sequence import Permute

__all__ = ["GroupTransform", "Inverted", "finite_group", "inverse_of", "verify_transform"]


class _ReversedCompose(Transform):
    """The inverse of a composition: the parts' inverses right to left, each with its own params
    (drawn by the composition itself, so both sides get the same draw)."""

    name = "inverse"
    arguments = (Param("forward", a_transform, doc="the composition undone (a Compose)"),
                 Param("inverses", transforms, doc="the inverse of each part"))

    def __init__(self, forward: Compose, inverses: tuple[Transform, ...]) -> None:
        super().__init__(forward=forward, inverses=inverses)

    def validate(self) -> None:
        if len(self.forward.parts) != len(self.inverses):
            raise TransformError(f"{len(self.forward.parts)} parts but {len(self.inverses)} inverses")

    @property
    def is_random(self) -> bool:
        return self.forward.is_random

    def sample(self, rng: Any) -> tuple[Any, ...]:
        return self.forward.sample(rng)

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        if params is None:
            params = (None,) * len(self.inverses)
        for inv, p in zip(reversed(self.inverses), reversed(tuple(params))):
            x = inv.apply(x, p)
        return x

    def describe(self) -> str:
        return " then ".join(i.describe() for i in reversed(self.inverses))


def inverse_of(t: Transform) -> Transform | None:
    """A transform undoing ``t`` with ``t``'s parameters, or None when the zoo cannot invert it."""
    if isinstance(t, Compose):
        invs = [inverse_of(p) for p in t.parts]
        if any(i is None for i in invs):
            return None
        return _ReversedCompose(t, tuple(invs))  # type: ignore[arg-type]
    fn = getattr(t, "inverse", None)
    if fn is None or not callable(fn):
        return None
    try:
        return fn()
    except Exception:
        return None


# -- finite groups --------------------------------------------------------------------------------
def _label(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError(f"expected a group name, got {v!r}")
    return v


class GroupTransform(Transform):
    """A finite group acting on samples, written ``C4``, ``C8``, ``Cn``, ``D4``, ``Dn``, ``Sk`` or
    ``{permutations: {k: 3, dim: -2}}``.

    An audit check with ``group:`` evaluates every element on every sample (the expectation over
    the group, exactly); used as an ordinary random transform (``sample``/``apply``, e.g. by the
    fine-tune penalty) it draws one element uniformly per sample.
    """

    name = "group"
    summary = "a finite group: C4, C8, Cn, D4, Dn, Sk / {permutations: {k, dim}}"

    arguments = (Param("label", _label, doc="the group's name in reports (C4, D4, S3)"),
                 Param("elements", transforms, doc="every element, the identity included"),
                 Param("exact", boolean, doc="False: rotations by non-multiples of 90 degrees interpolate"))

    def __init__(self, label: str, elements: tuple[Transform, ...], exact: bool) -> None:
        super().__init__(label=label, elements=elements, exact=exact)

    def validate(self) -> None:
        if not self.elements:
            raise TransformError(f"group {self.label} has no elements")

    @property
    def is_random(self) -> bool:
        return True

    @property
    def order(self) -> int:
        return len(self.elements)

    def element_names(self) -> list[str]:
        return [e.describe() for e in self.elements]

    def sample(self, rng: Any) -> torch.Tensor:
        """The element index of each sample, int64 ``(n,)``."""
        return rng.child("group-element").integers(0, self.order)

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        if params is None:
            raise TransformError(f"group {self.label} is random: pass the element indices drawn by sample()")
        idx = params.to(x.device)
        out = torch.empty_like(x)
        for i, e in enumerate(self.elements):
            rows = (idx == i).nonzero().squeeze(1)
            if rows.numel():
                moved = e.apply(x[rows], None)
                if moved.shape[1:] != x.shape[1:]:
                    raise TransformError(
                        f"element {e.describe()} of group {self.label} turns samples of shape {list(x.shape[1:])} "
                        f"into {list(moved.shape[1:])}, so one batch cannot hold every element",
                        hint="use square (H, W) inputs for rotation groups")
                out[rows] = moved
        return out

    def describe(self) -> str:
        return self.label


def _rotation(k: int, n: int) -> Transform:
    """The k-th rotation of C_n: rot90 when exact, else a bilinear rotate."""
    if k % n == 0:
        return Identity()
    if (4 * k) % n == 0:
        return Rot90(k=(4 * k) // n)
    return Rotate(degrees=360.0 * k / n)


def finite_group(value: Any) -> GroupTransform:
    """Parse a group written in a spec; ``ValueError`` with a readable message when wrong."""
    if isinstance(value, dict):
        if len(value) != 1 or "permutations" not in value:
            raise ValueError("a group mapping is {permutations: {k: K, dim: D}}")
        args = value["permutations"] or {}
        if not isinstance(args, dict) or set(args) - {"k", "dim"} or "k" not in args:
            raise ValueError("permutations takes k (the size of the permuted dimension) and dim (default -2)")
        k, dim = args["k"], args.get("dim", -2)
        for name, v in (("k", k), ("dim", dim)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"permutations.{name} must be an integer, got {v!r}")
        return _symmetric(k, dim)
    if not isinstance(value, str):
        raise ValueError(f"expected a group such as C4, D4, C8, S3 or {{permutations: {{k: 3}}}}, got {value!r}")
    m = re.fullmatch(r"([CDS])(\d+)", value.strip())
    if not m:
        raise ValueError(f"unknown group {value!r}: expected Cn (cyclic rotations), Dn (rotations and "
                         "reflections), Sk (permutations) or {permutations: {k: K, dim: D}}")
    kind, n = m.group(1), int(m.group(2))
    if kind == "S":
        return _symmetric(n, -2)
    if not 1 <= n <= 360:
        raise ValueError(f"{value}: n must lie in 1..360")
    rots = [_rotation(k, n) for k in range(n)]
    exact = 4 % n == 0
    if kind == "C":
        return GroupTransform(value, tuple(rots), exact)
    flips = [HFlip() if isinstance(r, Identity) else Compose([HFlip(), r]) for r in rots]
    return GroupTransform(value, tuple(rots + flips), exact)


def _symmetric(k: int, dim: int) -> GroupTransform:
    if not 1 <= k <= 6:
        raise ValueError(f"permutations of k={k}: k must lie in 1..6 (k! elements are evaluated)")
    elements: list[Transform] = []
    for perm in itertools.permutations(range(k)):
        if list(perm) == list(range(k)):
            elements.append(Identity())
        else:
            elements.append(Permute(dim=dim, perm=list(perm)))
    return GroupTransform(f"S{k}" if dim == -2 else f"S{k}(dim={dim})", tuple(elements), True)


# -- numerical verification of the group laws ---------------------------------------------------
#: For the built-in transforms: (identity kwargs, a, b, a-then-b kwargs). None: no such element.
LAWS: dict[str, tuple[Any, Any, Any, Any]] = {
    "identity": ({}, {}, {}, {}),
    "rot90": ({"k": 0}, {"k": 1}, {"k": 2}, {"k": 3}),
    "hflip": (None, {}, {}, "identity"),
    "vflip": (None, {}, {}, "identity"),
    "transpose": (None, {}, {}, "identity"),
    "flip": (None, {}, {}, "identity"),
    "shift": ({"dx": 0, "dy": 0}, {"dx": 1, "dy": 2}, {"dx": -3, "dy": 1}, {"dx": -2, "dy": 3}),
    "roll": ({"shift": 0}, {"shift": 1}, {"shift": 2}, {"shift": 3}),
    "permute": ({"perm": [0, 1, 2, 3, 4, 5]}, {"perm": [1, 2, 0, 3, 5, 4]}, {"perm": [5, 4, 3, 2, 1, 0]},
                {"perm": [4, 5, 3, 0, 2, 1]}),
    "rotate": ({"degrees": 0}, {"degrees": 30}, {"degrees": 45}, {"degrees": 75}),
    "scale": ({"factor": 1}, {"factor": 1.25}, {"factor": 0.8}, {"factor": 1}),
    "rotate3d": ({"axis": [0, 0, 1], "degrees": 0}, {"axis": [1, 1, 0], "degrees": 30},
                 {"axis": [1, 1, 0], "degrees": 60}, {"axis": [1, 1, 0], "degrees": 90}),
}
#: Configurations whose random draws are inverted too.
RANDOM_CONFIGS: dict[str, dict[str, Any]] = {
    "shift": {"dx": [-3, 3], "dy": [-3, 3]},
    "roll": {"shift": [-4, 4]},
    "permute": {},
    "rotate": {"degrees": [-40, 40]},
    "scale": {"factor": [0.8, 1.25]},
    "rotate3d": {},
}


def _sample_input(cls: type, approximate: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A test batch and the mask of entries compared: points for (..., 3) transforms, else images
    (smooth, and only the central disk compared, for interpolating transforms)."""
    g = torch.Generator().manual_seed(0)
    if "(..., 3)" in getattr(cls, "acts_on", ""):
        x = torch.randn(4, 5, 3, generator=g, dtype=torch.float64)
        return x, torch.ones_like(x, dtype=torch.bool)
    if not approximate:
        x = torch.rand(4, 2, 6, 6, generator=g, dtype=torch.float64)
        return x, torch.ones_like(x, dtype=torch.bool)
    size = 32
    r = (torch.arange(size, dtype=torch.float64) - (size - 1) / 2) / (size / 2)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    c = torch.randn(4, 2, 1, 1, generator=g, dtype=torch.float64)
    x = torch.exp(-4 * ((xx - 0.2 * c) ** 2 + (yy + 0.1 * c) ** 2))
    mask = (xx**2 + yy**2 < 0.5**2).expand_as(x)
    return x, mask


def _build(name: str, kwargs: Any) -> Transform:
    if kwargs == "identity":
        return build("identity")
    return build({name: kwargs})


def verify_transform(name: str) -> list[tuple[str, float | None, str]]:
    """Numerically check the group laws of one registered transform: identity (the identity
    element leaves x unchanged), composition (a then b equals their product), inverse (the
    inverse undoes a fixed and a random draw). Returns (law, max error, status) rows, status one
    of ``ok``, ``FAIL``, ``skipped``. Interpolating transforms are compared on smooth images,
    in the central disk, with a loose tolerance."""
    cls = get(name)
    approximate = bool(getattr(cls, "approximate", False))
    tol = 2e-2 if approximate else 1e-6
    x, mask = _sample_input(cls, approximate)
    rows: list[tuple[str, float | None, str]] = []

    def compare(law: str, a: torch.Tensor, b: torch.Tensor) -> None:
        if a.shape != b.shape:
            rows.append((law, None, "FAIL"))
            return
        err = float((a - b).abs()[mask].max()) if mask.any() else 0.0
        rows.append((law, err, "ok" if err <= tol else "FAIL"))

    laws = LAWS.get(name)
    skipped = [("identity", None, "skipped"), ("composition", None, "skipped"), ("inverse", None, "skipped")]
    if laws is None:
        # No known elements: check the inverse of a default instance when there is one. A
        # transform that does not declare itself a group action is not failed for what it lacks.
        declared = bool(getattr(cls, "group_action", False))
        try:
            t = cls()
            inv = inverse_of(t)
            if inv is None:
                return skipped if not declared else skipped[:2] + [("inverse", None, "FAIL")]
            p = t.sample(SampleRNG.for_range(0, 0, x.shape[0]))
            rows += skipped[:2]
            compare("inverse", inv.apply(t.apply(x, p), p), x)
        except Exception as exc:
            if declared:
                return skipped[:2] + [(f"inverse: {type(exc).__name__}: {exc}", None, "FAIL")]
            return skipped
        return rows
    try:
        e, a, b, ab = laws
        if e is None:
            rows.append(("identity", None, "skipped"))
        else:
            compare("identity", _build(name, e).apply(x, None), x)
        ta, tb, tab = _build(name, a), _build(name, b), _build(name, ab)
        compare("composition", tb.apply(ta.apply(x, None), None), tab.apply(x, None))
        inv = inverse_of(ta)
        if inv is None:
            rows.append(("inverse", None, "FAIL"))
        else:
            compare("inverse", inv.apply(ta.apply(x, None), None), x)
        if name in RANDOM_CONFIGS:
            t = _build(name, RANDOM_CONFIGS[name])
            p = t.sample(SampleRNG.for_range(0, 0, x.shape[0]))
            inv = inverse_of(t)
            if inv is None:
                rows.append(("inverse (random draw)", None, "FAIL"))
            else:
                compare("inverse (random draw)", inv.apply(t.apply(x, p), p), x)
    except Exception as exc:  # a transform that cannot even run the checks fails them
        rows.append((f"error: {type(exc).__name__}: {exc}", None, "FAIL"))
    return rows
