"""Transforms of 3-D points and vectors: the last dimension of each sample has size 3."""

from __future__ import annotations

import math
from typing import Any

import torch

from transforms_zoo.errors import TransformError, did_you_mean
from transforms_zoo.params import Param, number, number_or_range, positive
from transforms_zoo.protocol import Inverted, Transform
from transforms_zoo.registry import register
from transforms_zoo.random import SampleRNG


def _axis(v: Any) -> tuple[float, float, float]:
    """Three numbers, not all zero (normalised when used)."""
    if not isinstance(v, (list, tuple)) or len(v) != 3:
        raise ValueError(f"expected an axis [x, y, z] of three numbers, got {v!r}")
    xyz = tuple(number(c) for c in v)
    if not any(xyz):
        raise ValueError("the axis [0, 0, 0] has no direction")
    return xyz  # type: ignore[return-value]


#: The groups of 3-D orthogonal transformations ``rotate3d`` and ``irreps`` draw from.
GROUPS = ("SO3", "O3")


def rotation_group(v: Any) -> str:
    """``SO3`` (proper rotations) or ``O3`` (also rotations times the inversion); ``so3``, ``SO(3)``
    and the like are accepted."""
    key = str(v).strip().upper().replace("(", "").replace(")", "")
    if isinstance(v, str) and key in GROUPS:
        return key
    hint = did_you_mean(key, GROUPS) or ""
    raise ValueError(f"expected a group SO3 or O3, got {v!r}" + (f"; {hint}" if hint.startswith("did") else ""))


def with_inversion(rot: torch.Tensor, rng: SampleRNG) -> torch.Tensor:
    """``rot`` ``(n, 3, 3)`` with the inversion applied (``-R``) for a random half of the samples,
    drawn per sample from the ``inversion`` stream of ``rng``."""
    improper = rng.child("inversion").integers(0, 2).to(torch.bool)
    return torch.where(improper[:, None, None], -rot, rot)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` of quaternions ``(..., 4)`` ordered (w, x, y, z).

    The quaternion is normalised first; ``(cos(a/2), sin(a/2) * axis)`` gives the right-handed
    (counter-clockwise seen from the tip of the axis) rotation by ``a`` about ``axis``.
    """
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True).clamp_min(torch.finfo(q.dtype).tiny)
    w, x, y, z = q.unbind(-1)
    rows = (
        (1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)),
        (2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)),
        (2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)),
    )
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def axis_angle_to_matrix(axis: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotation matrices for unit ``axis`` ``(..., 3)`` and angles ``(...)`` in degrees."""
    half = torch.deg2rad(degrees) / 2
    q = torch.cat([torch.cos(half)[..., None], torch.sin(half)[..., None] * axis], dim=-1)
    return quaternion_to_matrix(q)


@register
class Rotate3d(Transform):
    """Rotates 3-D points or vectors: a last dimension of size 3 becomes ``x @ R.T``.

    By default ``R`` is a uniformly (Haar) distributed random rotation for each sample, from a
    normalised Gaussian quaternion. With ``axis`` and ``degrees`` it rotates about that fixed axis
    (right-handed: ``axis: [0, 0, 1], degrees: 90`` maps x to y); a ``[lo, hi]`` ``degrees`` range
    draws the angle uniformly per sample. With ``max_degrees`` the axis is uniform on the sphere and
    the angle uniform in ``[0, max_degrees]``. ``R`` is built in float64 and cast to the data's
    dtype, so it is orthogonal with determinant +1 to that dtype's precision.

    ``group: O3`` also draws improper elements: for a random half of the samples (per sample, like
    every draw) the matrix is ``-R`` (the rotation times the inversion), so vectors transform as
    e3nn's ``1o`` (``x -> -R x``) and a pseudovector (a cross product, ``1e``) is caught.
    """

    #: Composes as a group action (verified by ``eqaudit transforms --check``).
    group_action = True
    name = "rotate3d"
    summary = ("rotate 3-D points/vectors (last dim 3): uniform random in SO(3) by default, or about an axis; "
               "group: O3 adds the inversion")
    acts_on = "points or vectors (..., 3)"
    params = (
        Param("axis", _axis, None, "fixed rotation axis [x, y, z] (needs degrees); none: random", "[x, y, z]"),
        Param("degrees", number_or_range, None, "angle about axis, right-handed; [lo, hi]: uniform per sample",
              "number or [lo, hi]"),
        Param("max_degrees", positive, None, "random axis with an angle uniform in [0, max_degrees]", "number"),
        Param("group", rotation_group, "SO3", "SO3: proper rotations; O3: the rotation times the inversion "
              "(x -> -R x) for a random half of the samples, to test parity", "SO3 or O3"),
    )

    def validate(self) -> None:
        if self.axis is not None and self.degrees is None:
            raise TransformError("a fixed 'axis' needs 'degrees' (the angle about it)", key="degrees")
        if self.axis is None and self.degrees is not None:
            raise TransformError(
                "'degrees' is the angle about a fixed 'axis', which is not given", key="degrees",
                hint="give axis: [x, y, z], or use max_degrees to limit the angle of a random rotation",
            )
        if self.max_degrees is not None:
            if self.axis is not None:
                raise TransformError("'max_degrees' limits a random-axis rotation; with a fixed 'axis' use "
                                     "degrees: [lo, hi]", key="max_degrees")
            if self.max_degrees > 180:
                raise TransformError(f"max_degrees must be at most 180, got {self.max_degrees:g}",
                                     key="max_degrees", hint="180 already reaches every rotation")
        self._fixed_rotation: torch.Tensor | None = None  # a fixed axis and angle: its one rotation
        if self.axis is not None and self.degrees[0] == self.degrees[1]:
            self._fixed_rotation = self._about_axis(torch.tensor([self.degrees[0]], dtype=torch.float64))[0]

    @property
    def _fixed(self) -> torch.Tensor | None:
        """The one matrix of a transform that draws nothing; None when it draws."""
        return None if self.is_random else self._fixed_rotation

    def _about_axis(self, degrees: torch.Tensor) -> torch.Tensor:
        axis = torch.tensor(self.axis, dtype=torch.float64, device=degrees.device)
        axis = axis / torch.linalg.vector_norm(axis)
        return axis_angle_to_matrix(axis.expand(degrees.shape[0], 3), degrees)

    @property
    def is_random(self) -> bool:
        return self.group == "O3" or self.axis is None or self.degrees[0] != self.degrees[1]

    def sample(self, rng: SampleRNG) -> torch.Tensor | None:
        """The orthogonal matrices, float64 of shape ``(n, 3, 3)``: rotations, and with ``group: O3``
        rotations times the inversion for a random half of the samples (the rotations are the
        same draws as with ``SO3``)."""
        if not self.is_random:
            return None
        rot = self._rotations(rng)
        return with_inversion(rot, rng) if self.group == "O3" else rot

    def _rotations(self, rng: SampleRNG) -> torch.Tensor:
        """The proper rotations of ``rng.n`` samples, float64 ``(n, 3, 3)``."""
        f64 = torch.float64
        if self._fixed_rotation is not None:
            return self._fixed_rotation.to(rng.device).expand(rng.n, 3, 3)
        if self.axis is not None:
            lo, hi = self.degrees
            return self._about_axis(rng.child("degrees").uniform(low=lo, high=hi, dtype=f64))
        if self.max_degrees is not None:
            axis = rng.child("axis").normal(3, dtype=f64)
            axis = axis / torch.linalg.vector_norm(axis, dim=-1, keepdim=True).clamp_min(1e-300)
            angle = rng.child("angle").uniform(low=0.0, high=self.max_degrees, dtype=f64)
            return axis_angle_to_matrix(axis, angle)
        return quaternion_to_matrix(rng.child("quaternion").normal(4, dtype=f64))

    @staticmethod
    def _need_points(x: torch.Tensor) -> None:
        if x.dim() < 2 or x.shape[-1] != 3:
            raise TransformError(
                f"'rotate3d' acts on a last dimension of size 3 (points or vectors), "
                f"but one sample has shape {list(x.shape[1:])}"
            )
        if not x.is_floating_point():
            raise TransformError(f"'rotate3d' needs a floating-point tensor, got {x.dtype}")

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        self._need_points(x)
        n = x.shape[0]
        if params is None:
            self._require_fixed()
            r = self._fixed_rotation.to(device=x.device, dtype=x.dtype).expand(n, 3, 3)
        else:
            if params.shape[0] != n:
                raise TransformError(f"'rotate3d' got {params.shape[0]} rotations for a batch of shape {list(x.shape)}")
            r = params.to(device=x.device, dtype=x.dtype)
        pts = x.reshape(n, math.prod(x.shape[1:-1]), 3)
        return torch.matmul(pts, r.transpose(-1, -2)).reshape(x.shape)

    def inverse(self) -> Transform:
        """R^T, with the same parameters."""
        def undo(x: torch.Tensor, params: Any) -> torch.Tensor:
            if params is None:
                self._require_fixed()
                params = self._fixed_rotation.expand(x.shape[0], 3, 3)
            return self.apply(x, params.transpose(-1, -2))

        return Inverted(self, undo)

    def lie_generator_error(self) -> TransformError | None:
        if self.group == "O3":
            return TransformError("a Lie derivative follows a continuous path of rotations; the improper "
                                  "elements of O3 are not on one", key="group",
                                  hint="use group: SO3 with mode: lie, and a sampled check with group: O3 for parity")
        if self.axis is None:
            return TransformError("a Lie derivative of 'rotate3d' needs a fixed 'axis' (the path's generator)",
                                  key="axis")
        if self.degrees == (0.0, 0.0):
            return TransformError("a rotation by 0 degrees does not move, so its Lie derivative would be taken "
                                  "along a made-up direction", key="degrees",
                                  hint="give any nonzero angle, e.g. degrees: 1; its size does not matter")
        return None

    def lie_path(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Rotation by ``t`` radians (``(n,)``) about the fixed ``axis`` (right-handed; 0 degrees is
        refused)."""
        self._require_lie_generator()
        self._need_points(x)
        a = torch.tensor(self.axis, dtype=x.dtype, device=x.device)
        a = a / torch.linalg.vector_norm(a)
        k = torch.zeros(3, 3, dtype=x.dtype, device=x.device)
        k[0, 1], k[0, 2], k[1, 0], k[1, 2], k[2, 0], k[2, 1] = -a[2], a[1], a[2], -a[0], -a[1], a[0]
        s, c = torch.sin(t.to(x.dtype))[:, None, None], torch.cos(t.to(x.dtype))[:, None, None]
        r = torch.eye(3, dtype=x.dtype, device=x.device) + s * k + (1 - c) * (k @ k)  # Rodrigues
        pts = x.reshape(x.shape[0], math.prod(x.shape[1:-1]), 3)
        return torch.matmul(pts, r.transpose(-1, -2)).reshape(x.shape)
