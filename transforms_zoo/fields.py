"""escnn-style actions on feature maps: ``regular_c4`` (C4-regular fields under quarter turns)
and ``field`` (one group element: a spatial move plus a channel representation per field)."""

from __future__ import annotations

from typing import Any

import torch

from transforms_zoo.errors import TransformError
from transforms_zoo.params import Param, int_or_range, integer, number, one_of
from transforms_zoo.protocol import Inverted, Transform
from transforms_zoo.random import SampleRNG
from transforms_zoo.registry import register


def _spatial(x: torch.Tensor, move: str, k: int) -> torch.Tensor:
    if move == "rot90":
        return torch.rot90(x, k, (-2, -1)) if k % 4 else x
    if move == "hflip":
        return torch.flip(x, (-1,))
    if move == "vflip":
        return torch.flip(x, (-2,))
    if move == "transpose":
        return torch.transpose(x, -2, -1)
    return x


def _fields(x: torch.Tensor, g: int, layout: str, name: str) -> tuple[torch.Tensor, int]:
    """View the channel axis (-3) as (fields, g) (layout field) or (g, fields) (layout group)."""
    if x.dim() < 4:
        raise TransformError(f"'{name}' acts on feature maps (..., C, H, W), but one sample has shape "
                             f"{list(x.shape[1:])}")
    c = x.shape[-3]
    if c % g:
        raise TransformError(f"'{name}' needs a channel count that is a multiple of {g} (fields of {g} "
                             f"channels), got {c} channels in a sample of shape {list(x.shape[1:])}",
                             hint="is this side of the check a regular feature map?")
    m = c // g
    lead, hw = x.shape[:-3], x.shape[-2:]
    if layout == "field":
        return x.reshape(*lead, m, g, *hw), -3  # group axis
    return x.reshape(*lead, g, m, *hw), -4


@register
class RegularC4(Transform):
    """Rotates a feature map of C4-regular fields by ``k`` quarter turns (counter-clockwise, as
    ``rot90``): ``torch.rot90`` of (H, W) plus a cyclic shift of the 4 channels of every field, so
    that channel ``h`` of a field moves to ``(h + roll * k) mod 4``. This is how a C4 group
    convolution's output transforms: with filters rotated by ``h`` quarter turns in channel ``h``,
    rotating the input by one quarter turn rotates each map and moves orientation ``h - 1`` to
    ``h``. ``layout: field`` (escnn's order) keeps each field's 4 channels together
    ``[f0g0, f0g1, f0g2, f0g3, f1g0, ...]``; ``layout: group`` stacks orientation blocks
    ``[g0 of all fields, g1 of all fields, ...]``. A ``[lo, hi]`` ``k`` draws the number of turns
    per sample; under ``both:`` the input must then be a regular feature map too (use
    ``input: {rot90: {k: K}}`` with ``output: {regular_c4: {k: K}}`` for a lifting layer).
    """

    name = "regular_c4"
    summary = "rot90 a feature map of C4-regular fields and cyclically shift each field's 4 channels"
    acts_on = "feature map (..., 4m, H, W)"
    params = (
        Param("k", int_or_range, 1, "quarter turns counter-clockwise; [lo, hi]: uniform per sample", "int or [lo, hi]"),
        Param("roll", integer, 1, "channel shift per quarter turn (-1 if the rotations are indexed clockwise)", "int"),
        Param("layout", one_of("field", "group"), "field",
              "field: each field's 4 channels together (escnn); group: orientation blocks", "field | group"),
    )

    @property
    def is_random(self) -> bool:
        return self.k[0] != self.k[1]

    def sample(self, rng: SampleRNG) -> torch.Tensor | None:
        """Quarter turns per sample, int64 ``(n,)``."""
        if not self.is_random:
            return None
        return rng.child("k").integers(self.k[0], self.k[1] + 1)

    def inverse(self) -> Transform:
        """``-k`` quarter turns (and the opposite channel shift), with the same parameters."""
        if not self.is_random:
            return RegularC4(k=-self.k[0], roll=self.roll, layout=self.layout)
        return Inverted(self, lambda x, params: self.apply(x, None if params is None else -params))

    def _mixed_shapes(self, x: torch.Tensor) -> TransformError:
        return TransformError(f"odd and even quarter turns of non-square maps {list(x.shape[-2:])} give "
                              "different shapes, so one batch cannot mix them", hint="use square inputs, or a fixed k")

    def _one(self, x: torch.Tensor, k: int) -> torch.Tensor:
        v, axis = _fields(x, 4, self.layout, self.name)
        shift = (self.roll * k) % 4
        if shift:
            v = torch.roll(v, shift, dims=axis)
        v = _spatial(v, "rot90", k)
        return v.reshape(*x.shape[:-2], v.shape[-2], v.shape[-1])

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        if params is None:
            self._require_fixed()
            return self._one(x, self.k[0])
        _fields(x, 4, self.layout, self.name)
        if self.k[1] > self.k[0] and x.shape[-2] != x.shape[-1]:  # whatever this batch drew, others mix
            raise self._mixed_shapes(x)
        ks = params.to(x.device).remainder(4)
        if ks.shape[0] != x.shape[0]:
            raise TransformError(f"'regular_c4' got {ks.shape[0]} turns for a batch of shape {list(x.shape)}")
        out: torch.Tensor | None = None
        for k in range(4):
            rows = (ks == k).nonzero().squeeze(1)
            if not rows.numel():
                continue
            part = self._one(x[rows], k)
            if out is None:
                out = part.new_empty((x.shape[0], *part.shape[1:]))
            elif out.shape[1:] != part.shape[1:]:
                raise self._mixed_shapes(x)
            out[rows] = part
        return out if out is not None else x


def _perm(v: Any) -> tuple[int, ...]:
    if not isinstance(v, (list, tuple)) or not v:
        raise ValueError(f"expected a permutation such as [1, 2, 3, 0], got {v!r}")
    items = tuple(integer(i) for i in v)
    if sorted(items) != list(range(len(items))):
        raise ValueError(f"expected a permutation of 0..{len(items) - 1}, got {list(v)}")
    return items


def _matrix(v: Any) -> tuple[tuple[float, ...], ...]:
    if not isinstance(v, (list, tuple)) or not v or not all(isinstance(r, (list, tuple)) for r in v):
        raise ValueError(f"expected a square matrix as a list of rows, got {v!r}")
    rows = tuple(tuple(number(c) for c in r) for r in v)
    if any(len(r) != len(rows) for r in rows):
        raise ValueError(f"expected a square matrix ({len(rows)} rows of {len(rows)} numbers)")
    return rows


@register
class Field(Transform):
    """One group element acting on a feature map, as escnn's ``FieldType.transform``: a spatial
    move of (H, W) plus a representation ``rho`` acting on every field of ``g`` channels.

    ``perm`` gives ``rho`` as a permutation: channel ``i`` of each transformed field is channel
    ``perm[i]`` of the original (``x[:, perm]`` per field; a C4-regular field under one quarter turn
    is ``perm: [3, 0, 1, 2]``). ``matrix`` gives it as a ``g x g`` matrix: each field's channel
    vector ``v`` becomes ``matrix @ v`` (a 2-D vector field ``(u, v)`` with ``u`` along W and ``v``
    along H, rows growing downwards, under one quarter turn: ``[[0, 1], [-1, 0]]``). With neither,
    every channel is a scalar field (only the spatial move). ``layout`` says how fields are laid out along the channels, as for ``regular_c4``.
    """

    name = "field"
    summary = "a spatial move (rot90, flips, transpose) plus a channel representation per field (escnn-style)"
    acts_on = "feature map (..., C, H, W)"
    params = (
        Param("spatial", one_of("rot90", "hflip", "vflip", "transpose", "identity"), "rot90",
              "the move of (H, W)", "rot90 | hflip | vflip | transpose | identity"),
        Param("k", integer, 1, "quarter turns counter-clockwise for spatial: rot90", "int"),
        Param("perm", _perm, None, "channel permutation within each field: new channel i = old perm[i]", "[int, ...]"),
        Param("matrix", _matrix, None, "g x g matrix acting on each field's channel vector", "[[...], ...]"),
        Param("layout", one_of("field", "group"), "field",
              "field: each field's channels together (escnn); group: blocks of channel i of all fields",
              "field | group"),
    )

    def validate(self) -> None:
        if self.perm is not None and self.matrix is not None:
            raise TransformError("give either 'perm' or 'matrix', not both", key="matrix")
        if self.spatial != "rot90" and "k" in self._given:
            raise TransformError(f"'k' is the number of quarter turns of spatial: rot90, not of {self.spatial}",
                                 key="k")

    def inverse(self) -> Transform:
        """The inverse group element: the channel action undone, then the spatial move undone."""
        if self.perm is not None:
            inv_perm = [0] * len(self.perm)
            for i, p in enumerate(self.perm):
                inv_perm[p] = i
            channels: dict[str, Any] = {"perm": inv_perm}
        elif self.matrix is not None:
            inv = torch.linalg.inv(torch.tensor(self.matrix, dtype=torch.float64))
            channels = {"matrix": inv.tolist()}
        else:
            channels = {}
        undo_channels = Field(spatial="identity", layout=self.layout, **channels)
        undo_space = Field(spatial=self.spatial, **({"k": -self.k} if self.spatial == "rot90" else {}))
        return Inverted(self, lambda x, params: undo_space.apply(undo_channels.apply(x, None), None))

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        if x.dim() < 3:
            raise TransformError(f"'field' acts on the last two dimensions (H, W), but one sample has shape "
                                 f"{list(x.shape[1:])}")
        y = _spatial(x, self.spatial, self.k)
        if self.perm is None and self.matrix is None:
            return y
        g = len(self.perm) if self.perm is not None else len(self.matrix)
        v, axis = _fields(y, g, self.layout, self.name)
        if self.perm is not None:
            idx = torch.tensor(self.perm, device=x.device)
            v = torch.index_select(v, axis % v.dim(), idx)
        else:
            if not v.is_floating_point():
                raise TransformError(f"'field' with a matrix needs a floating-point tensor, got {v.dtype}")
            mat = torch.tensor(self.matrix, dtype=v.dtype, device=v.device)
            v = torch.movedim(torch.tensordot(mat, torch.movedim(v, axis, 0), dims=([1], [0])), 0, axis)
        return v.reshape(y.shape)
