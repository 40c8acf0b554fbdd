"""Adapters for equivariant-network libraries: e3nn irreps and escnn-style field actions.

These are output actions for models whose outputs are not plain images or points:

- ``irreps`` rotates e3nn irreps features by the Wigner-D matrices of a random 3-D rotation and
  the model's input (points, vectors or irreps features) by the same rotation. It is written under
  ``both:`` so that the engine hands the SAME draw to both sides::

      both: {irreps: {irreps: "1x0e + 1x1o"}}                 # input: points (..., 3)
      both: {irreps: {input: "5x0e + 2x1o", irreps: "1x2e"}}  # input: irreps features

  Which side a tensor is on is told by the size of its last dimension (the input's or the output
  representation's dimension); two different representations of the same size are refused.
  e3nn is optional: it is imported when an ``irreps`` transform is built (``pip install
  'eqaudit[e3nn]'``).
- ``regular_c4`` rotates a feature map of C4-regular fields (escnn's ``regular_repr`` of the
  cyclic group of order 4): ``rot90`` of the spatial dimensions plus a cyclic shift of the 4
  channels of each field.
- ``field`` is the general form for one fixed group element: a spatial move (``rot90``, ``hflip``,
  ``vflip``, ``transpose`` or ``identity``) plus a channel representation acting on each field of
  ``g`` channels, given as a permutation or a ``g x g`` matrix (escnn's ``FieldType.transform``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from transforms_zoo.base import Param, Transform, TransformError, int_or_range, integer, number, one_of, register
from transforms_zoo.points import Rotate3d
from transforms_zoo.random import SampleRNG

_E3NN_HINT = "install the optional dependency: pip install 'eqaudit[e3nn]' (or pip install e3nn)"


def _o3() -> Any:
    """``e3nn.o3``, imported on first use; a clear TransformError when e3nn is missing."""
    try:
        from e3nn import o3
    except ImportError as exc:
        raise TransformError(f"the 'irreps' transform needs e3nn, which cannot be imported ({exc})",
                             hint=_E3NN_HINT) from None
    return o3


# -- e3nn irreps ------------------------------------------------------------------------------------
class _Rep:
    """A representation of SO(3) on a last dimension: ``xyz`` (the rotation matrix itself, as
    ``rotate3d``) or e3nn irreps (a block-diagonal of Wigner-D matrices)."""

    def __init__(self, text: Any) -> None:
        self.text = text if isinstance(text, str) else str(text)
        if isinstance(text, str) and text.strip().lower() in ("xyz", "points", "vectors"):
            self.irreps = None
            self.blocks: tuple[tuple[int, int], ...] = ((1, 1),)
            self.dim = 3
            return
        o3 = _o3()
        try:
            irreps = o3.Irreps(text)
        except Exception as exc:  # e3nn raises ValueError, AssertionError, ...
            msg = str(exc).strip() or type(exc).__name__
            raise ValueError(f"not an e3nn irreps string: {text!r} ({msg})") from None
        self.irreps = irreps
        self.blocks = tuple((int(mul), int(ir.l)) for mul, ir in irreps)
        self.dim = int(irreps.dim)

    def __str__(self) -> str:
        return self.text

    def lengths(self) -> list[int]:
        """The l of every irrep copy, in order (two reps with equal lists act identically on SO(3))."""
        return [l for mul, l in self.blocks for _ in range(mul)]

    def act(self, x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
        """``x`` of shape ``(n, ..., dim)`` rotated by the rotations ``rot`` ``(n, 3, 3)``."""
        n = x.shape[0]
        flat = x.reshape(n, -1, self.dim)
        if self.irreps is None:
            return torch.matmul(flat, rot.to(x.dtype).transpose(-1, -2)).reshape(x.shape)
        parts = []
        start = 0
        cache: dict[int, torch.Tensor] = {}
        for mul, l in self.blocks:
            d = 2 * l + 1
            block = flat[..., start : start + mul * d]
            start += mul * d
            if l == 0 or mul == 0:
                parts.append(block)
                continue
            if l not in cache:
                cache[l] = wigner_d(l, rot).to(x.dtype)
            dl = cache[l]  # (n, d, d)
            b = block.reshape(n, flat.shape[1], mul, d)
            parts.append(torch.einsum("nij,npmj->npmi", dl, b).reshape(n, flat.shape[1], mul * d))
        return torch.cat(parts, dim=-1).reshape(x.shape) if parts else x


_SH_FRAMES: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}


def _frame(l: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed unit vectors ``X`` (m, 3) and the pseudo-inverse of their spherical harmonics."""
    key = (l, str(device))
    if key not in _SH_FRAMES:
        o3 = _o3()
        m = 4 * l + 6  # Fibonacci points on the sphere: well conditioned for degree l
        i = torch.arange(m, dtype=torch.float64) + 0.5
        z = 1 - 2 * i / m
        phi = math.pi * (1 + math.sqrt(5)) * i
        r = torch.sqrt(1 - z * z)
        pts = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1)
        with torch.inference_mode(False), torch.no_grad():
            y0 = o3.spherical_harmonics(l, pts, normalize=False, normalization="component")
            pinv = torch.linalg.pinv(y0)
        _SH_FRAMES[key] = (pts.to(device), pinv.to(device))
    return _SH_FRAMES[key]


def wigner_d(l: int, rot: torch.Tensor) -> torch.Tensor:
    """Wigner-D matrices of degree ``l`` in e3nn's basis for rotation matrices ``rot`` (n, 3, 3).

    Computed in float64 from e3nn's spherical harmonics, which satisfy
    ``Y(R x) = D(R) Y(x)``: with fixed points ``X``, ``D(R)^T = pinv(Y(X)) Y(X R^T)``. This is
    exact to float64 rounding (e3nn's own ``D_from_matrix`` goes through Euler angles and float32
    constants, about 1e-7).
    """
    o3 = _o3()
    rot = rot.to(torch.float64)
    pts, pinv = _frame(l, rot.device)
    moved = torch.matmul(pts, rot.transpose(-1, -2))  # (n, m, 3): R x for each fixed x
    y = o3.spherical_harmonics(l, moved, normalize=False, normalization="component")  # (n, m, d)
    return torch.matmul(pinv, y).transpose(-1, -2)


def _irreps_param(v: Any) -> _Rep:
    if not isinstance(v, str) and not hasattr(v, "dim"):
        raise ValueError(f"expected an e3nn irreps string such as \"1x0e + 1x1o\", got {v!r}")
    return _Rep(v)


@register
class IrrepsRotation(Transform):
    """Rotates model inputs and e3nn irreps outputs by the same random 3-D rotation: write it under
    ``both:`` so that both sides get the same draw.

    The rotation ``R`` is drawn exactly as ``rotate3d`` draws it (uniform on SO(3); or ``axis`` +
    ``degrees``, or ``max_degrees``). A tensor whose last dimension has the size of ``input`` is
    rotated as the input (``xyz``: points or vectors, ``x @ R.T`` like ``rotate3d``; or an irreps
    string), one whose last dimension has the size of ``irreps`` by the block-diagonal Wigner-D
    matrix ``D(R)`` of those irreps (e3nn's basis, computed in float64). ``input`` and ``irreps``
    of the same size must act identically (the side is told by the size); otherwise the spec is
    refused. Only proper rotations are drawn, so parity (``e``/``o``) plays no role.
    """

    name = "irreps"
    summary = "rotate inputs (xyz or irreps) and e3nn irreps outputs by one random rotation (use under both:)"
    acts_on = "irreps features (..., irreps.dim) or points (..., 3)"
    params = (
        Param("irreps", _irreps_param, doc="the representation of the model's outputs, e.g. \"1x0e + 1x1o\"",
              type_doc="irreps string"),
        Param("input", _irreps_param, _Rep("xyz"), "the representation of the model's inputs: xyz (points or "
              "vectors, as rotate3d) or an irreps string", "xyz or irreps string"),
        *Rotate3d.params,
    )

    def validate(self) -> None:
        kwargs = {k: self._given[k] for k in ("axis", "degrees", "max_degrees") if k in self._given}
        self._rotation = Rotate3d(**kwargs)
        rep_in, rep_out = self.input, self.irreps
        if rep_in.dim == rep_out.dim and rep_in.lengths() != rep_out.lengths():
            raise TransformError(
                f"input ({rep_in.text}) and irreps ({rep_out.text}) have the same size {rep_in.dim} but act "
                "differently, so a tensor's side cannot be told by its size",
                key="irreps",
                hint="give an output representation of another size, or use input: rotate3d with a separate check",
            )

    @property
    def is_random(self) -> bool:
        return self._rotation.is_random

    def sample(self, rng: SampleRNG) -> torch.Tensor | None:
        """The rotation matrices, float64 ``(n, 3, 3)``: the same draw as ``rotate3d``'s."""
        return self._rotation.sample(rng)

    def inverse(self) -> Transform:
        """The rotation by ``R^T`` on both sides, with the same parameters."""
        from transforms_zoo.group import Inverted

        def undo(x: torch.Tensor, params: Any) -> torch.Tensor:
            if params is None:
                fixed = self._rotation._fixed
                if fixed is None:
                    raise TransformError("'irreps' is random: pass the parameters drawn by sample()")
                params = fixed.expand(x.shape[0], 3, 3)
            return self.apply(x, params.transpose(-1, -2))

        return Inverted(self, undo)

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        if x.dim() < 2 or not x.is_floating_point():
            raise TransformError(f"'irreps' acts on floating-point batches (n, ..., dim), got shape "
                                 f"{list(x.shape)} of {x.dtype}")
        n = x.shape[0]
        if params is None:
            fixed = self._rotation._fixed
            if fixed is None:
                raise TransformError("'irreps' is random: pass the parameters drawn by sample()")
            rot = fixed.to(x.device).expand(n, 3, 3)
        else:
            if params.shape[0] != n:
                raise TransformError(f"'irreps' got {params.shape[0]} rotations for a batch of shape {list(x.shape)}")
            rot = params.to(x.device)
        last = x.shape[-1]
        if last == self.input.dim:
            return self.input.act(x, rot)
        if last == self.irreps.dim:
            return self.irreps.act(x, rot)
        raise TransformError(
            f"'irreps' acts on a last dimension of size {self.input.dim} (input: {self.input.text}) or "
            f"{self.irreps.dim} (irreps: {self.irreps.text}), but the batch has shape {list(x.shape)}",
            hint="check the irreps strings against the model's input and output",
        )


# -- escnn-style field actions -----------------------------------------------------------------
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
        raise TransformError(f"'{name}' acts on feature maps (n, ..., C, H, W), but the batch has shape "
                             f"{list(x.shape)}")
    c = x.shape[-3]
    if c % g:
        raise TransformError(f"'{name}' needs a channel count that is a multiple of {g} (fields of {g} "
                             f"channels), got {c} channels in shape {list(x.shape)}",
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

    def validate(self) -> None:
        self.k = int_or_range(self.k)  # the default (1) arrives unparsed

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
        from transforms_zoo.group import Inverted

        return Inverted(self, lambda x, params: self.apply(x, None if params is None else -params))

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
                raise TransformError(f"odd and even quarter turns of non-square maps {list(x.shape[-2:])} give "
                                     "different shapes, so one batch cannot mix them",
                                     hint="use square inputs, or a fixed k")
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
        from transforms_zoo.group import Inverted

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
            raise TransformError(f"'field' acts on the last two dimensions (H, W), but the batch has shape "
                                 f"{list(x.shape)}")
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
