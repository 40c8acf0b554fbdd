"""The ``irreps`` transform: one random 3-D rotation acting on model inputs (points or e3nn
irreps features) and on e3nn irreps outputs through exact float64 Wigner-D matrices.

e3nn is optional: it is imported when an ``irreps`` transform is built (``pip install
'eqaudit[e3nn]'``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from transforms_zoo.errors import TransformError
from transforms_zoo.params import Param
from transforms_zoo.points import Rotate3d
from transforms_zoo.protocol import Inverted, Transform
from transforms_zoo.random import SampleRNG
from transforms_zoo.registry import register

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
    """A representation of O(3) on a last dimension: ``xyz`` (the matrix itself, as ``rotate3d``:
    vectors are ``1o``) or e3nn irreps (a block-diagonal of Wigner-D matrices, times the parity
    ``p`` of each irrep for improper matrices, as e3nn's ``D_from_matrix``)."""

    def __init__(self, text: Any) -> None:
        self.text = text if isinstance(text, str) else str(text)
        if isinstance(text, str) and text.strip().lower() in ("xyz", "points", "vectors"):
            self.irreps = None
            self.blocks: tuple[tuple[int, int, int], ...] = ((1, 1, -1),)  # (mul, l, parity): 1x1o
            self.dim = 3
            return
        o3 = _o3()
        try:
            irreps = o3.Irreps(text)
        except Exception as exc:  # e3nn raises ValueError, AssertionError, ...
            msg = str(exc).strip() or type(exc).__name__
            raise ValueError(f"not an e3nn irreps string: {text!r} ({msg})") from None
        self.irreps = irreps
        self.blocks = tuple((int(mul), int(ir.l), int(ir.p)) for mul, ir in irreps)
        self.dim = int(irreps.dim)

    def __str__(self) -> str:
        return self.text

    def actions(self, parity: bool) -> list[Any]:
        """The ``l`` (or ``(l, p)`` when ``parity``) of every irrep copy, in order: two reps with
        equal lists act identically on SO(3) (on O(3))."""
        return [(l, p) if parity else l for mul, l, p in self.blocks for _ in range(mul)]

    def act(self, x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
        """``x`` of shape ``(n, ..., dim)`` transformed by the orthogonal matrices ``rot``
        ``(n, 3, 3)``: an irrep ``l p`` by ``p**k D_l(det(Q) Q)``, ``k = 1`` for an improper
        ``Q`` (e3nn's convention); for proper ``Q`` the factors are exactly 1."""
        n = x.shape[0]
        flat = x.reshape(n, -1, self.dim)
        if self.irreps is None:
            return torch.matmul(flat, rot.to(x.dtype).transpose(-1, -2)).reshape(x.shape)
        sign = torch.linalg.det(rot.to(torch.float64)).sign()  # +1 proper, -1 improper
        rot = rot * sign.to(rot.dtype)[:, None, None]  # the proper part
        parts = []
        start = 0
        cache: dict[int, torch.Tensor] = {}
        for mul, l, p in self.blocks:
            d = 2 * l + 1
            block = flat[..., start : start + mul * d]
            start += mul * d
            if l > 0 and mul > 0:
                if l not in cache:
                    cache[l] = wigner_d(l, rot).to(x.dtype)
                b = block.reshape(n, flat.shape[1], mul, d)
                block = torch.einsum("nij,npmj->npmi", cache[l], b).reshape(n, flat.shape[1], mul * d)
            if p == -1:
                block = block * sign.to(x.dtype)[:, None, None]
            parts.append(block)
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
    refused.

    ``group: O3`` also tests parity: for a random half of the samples the drawn matrix is ``-R``
    (the rotation times the inversion, as ``rotate3d`` with ``group: O3``); points become ``-R x``
    and an irrep ``l p`` is multiplied by its parity ``p`` (``p D(R)``, e3nn's ``D_from_matrix``),
    so an output written ``1x1e`` where the model gives ``1x1o`` (or the reverse) fails. With the
    default ``SO3`` only proper rotations are drawn and parity plays no role.
    """

    name = "irreps"
    summary = ("rotate inputs (xyz or irreps) and e3nn irreps outputs by one random rotation; group: O3 "
               "adds parity (use under both:)")
    acts_on = "irreps features (..., irreps.dim) or points (..., 3)"
    params = (
        Param("irreps", _irreps_param, doc="the representation of the model's outputs, e.g. \"1x0e + 1x1o\"",
              type_doc="irreps string"),
        Param("input", _irreps_param, "xyz", "the representation of the model's inputs: xyz (points or "
              "vectors, as rotate3d) or an irreps string", "xyz or irreps string"),
        *Rotate3d.params,
    )

    def validate(self) -> None:
        kwargs = {k: self._given[k] for k in ("axis", "degrees", "max_degrees", "group") if k in self._given}
        self._rotation = Rotate3d(**kwargs)
        rep_in, rep_out = self.input, self.irreps
        parity = self.group == "O3"
        if rep_in.dim == rep_out.dim and rep_in.actions(parity) != rep_out.actions(parity):
            raise TransformError(
                f"input ({rep_in.text}) and irreps ({rep_out.text}) have the same size {rep_in.dim} but act "
                f"differently{' on O(3)' if parity else ''}, so a tensor's side cannot be told by its size",
                key="irreps",
                hint="give an output representation of another size, or use input: rotate3d with a separate check",
            )

    @property
    def is_random(self) -> bool:
        return self._rotation.is_random

    def sample(self, rng: SampleRNG) -> torch.Tensor | None:
        """The matrices, float64 ``(n, 3, 3)``: the same draw as ``rotate3d``'s (improper for half
        the samples with ``group: O3``)."""
        return self._rotation.sample(rng)

    def inverse(self) -> Transform:
        """The rotation by ``R^T`` on both sides, with the same parameters."""
        def undo(x: torch.Tensor, params: Any) -> torch.Tensor:
            if params is None:
                self._require_fixed()
                params = self._rotation._fixed_rotation.expand(x.shape[0], 3, 3)
            return self.apply(x, params.transpose(-1, -2))

        return Inverted(self, undo)

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        if x.dim() < 2 or not x.is_floating_point():
            raise TransformError(f"'irreps' acts on floating-point batches (n, ..., dim), got shape "
                                 f"{list(x.shape)} of {x.dtype}")
        n = x.shape[0]
        if params is None:
            self._require_fixed()
            rot = self._rotation._fixed_rotation.to(x.device).expand(n, 3, 3)
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
            f"{self.irreps.dim} (irreps: {self.irreps.text}), but one sample has shape {list(x.shape[1:])}",
            hint="check the irreps strings against the model's input and output",
        )
