"""Transforms of sequences and sets along one dimension of each sample: permute, roll, flip.

Dimensions count within ONE sample (no batch dimension), as in a spec's ``input.shape``: a
negative ``dim`` counts from the end, a non-negative one from the first sample dimension (so
``dim: 0`` is dimension 1 of the batch).

Also holds small helpers shared by the other zoo modules: :func:`take_along` (a per-sample
gather) and :func:`draw_keys` / :func:`keyed_rng` (parameters whose size is only known when the
transform is applied, such as a permutation of a dimension or noise of a sample's shape).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from transforms_zoo.errors import TransformError, check_rows
from transforms_zoo.params import Param, int_or_range, integer
from transforms_zoo.protocol import Inverted, Transform
from transforms_zoo.registry import register
from transforms_zoo.random import SampleRNG, stream_id


# -- shared helpers -----------------------------------------------------------------------------
def sample_dim(x: torch.Tensor, dim: int, name: str) -> int:
    """The batch dimension of ``x`` that a per-sample ``dim`` names; TransformError if absent."""
    nd = x.dim() - 1
    if not -nd <= dim < nd:
        raise TransformError(
            f"'{name}' acts on dimension {dim} of each sample, but samples have shape "
            f"{list(x.shape[1:])} ({nd} dimension{'s' if nd != 1 else ''})",
            hint="dimensions count within one sample, without the batch dimension",
        )
    return dim + 1 if dim >= 0 else x.dim() + dim


def take_along(x: torch.Tensor, d: int, idx: torch.Tensor) -> torch.Tensor:
    """``out[r, ..., i, ...] = x[r, ..., idx[r, i], ...]`` along batch dimension ``d`` (> 0).

    ``idx`` has shape ``(n, k)`` or ``(1, k)`` with ``k == x.shape[d]``: one index row per sample.
    """
    k = x.shape[d]
    view = [idx.shape[0]] + [1] * (d - 1) + [k] + [1] * (x.dim() - d - 1)
    return torch.gather(x, d, idx.reshape(view).expand(x.shape))


class Keys(NamedTuple):
    """Per-sample random 32-bit keys (int64, shape ``(n,)``) from which ``apply`` draws what
    depends on the data's shape. They are a function of (seed, stream, sample index) like every
    draw."""

    key: torch.Tensor


def draw_keys(rng: SampleRNG) -> Keys:
    """One key per sample, for draws whose size is only known at apply time."""
    return Keys(rng.words())


def keyed_rng(params: Any, device: torch.device, tag: str) -> SampleRNG:
    """The :class:`SampleRNG` of the keys in ``params`` (on ``device``), stream ``tag``."""
    if not isinstance(params, Keys):
        raise TransformError(f"expected parameters drawn by sample(), got {type(params).__name__}")
    return SampleRNG.from_keys(params.key.to(device), stream_id(tag))


def _perm_list(v: Any) -> tuple[int, ...]:
    """A permutation of 0..k-1 written as a list of integers."""
    if not isinstance(v, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        raise ValueError(f"expected a list of integers (a permutation of 0..k-1), got {v!r}")
    if sorted(v) != list(range(len(v))):
        raise ValueError(f"{list(v)} is not a permutation of 0..{len(v) - 1}")
    return tuple(int(i) for i in v)


# -- transforms ---------------------------------------------------------------------------------
@register
class Permute(Transform):
    """Reorders the entries of one dimension: ``out[..., i, ...] = x[..., perm[i], ...]``.

    Without ``perm`` each sample gets its own uniformly random permutation; it is drawn from the
    sample's keys when applied (the size of the dimension is known only then), so a ``both:``
    check applies the same permutation to input and output when that dimension has the same size.
    """

    #: Composes as a group action (verified by ``eqaudit transforms --check``).
    group_action = True
    name = "permute"
    summary = "reorder the entries of one dimension (a set's elements, a sequence's tokens)"
    acts_on = "sequence or set (..., N, ...)"
    params = (
        Param("dim", integer, -2, "dimension of one sample to permute (negative: from the end)", "int"),
        Param("perm", _perm_list, None, "a fixed permutation; none: uniformly random per sample", "list of int"),
    )

    @property
    def is_random(self) -> bool:
        return self.perm is None

    def sample(self, rng: SampleRNG) -> Keys | None:
        return draw_keys(rng.child("perm")) if self.perm is None else None

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        d = sample_dim(x, self.dim, self.name)
        k = x.shape[d]
        if self.perm is not None:
            if len(self.perm) != k:
                raise TransformError(
                    f"'permute' perm has {len(self.perm)} entries but dimension {self.dim} of the "
                    f"sample shape {list(x.shape[1:])} has size {k}"
                )
            return x.index_select(d, torch.tensor(self.perm, dtype=torch.int64, device=x.device))
        rng = keyed_rng(params, x.device, "permute")
        check_rows(x, rng.n, self.name)
        return take_along(x, d, rng.permutation(k))

    def inverse(self) -> Transform:
        if self.perm is not None:
            inv = [0] * len(self.perm)
            for i, p in enumerate(self.perm):
                inv[p] = i
            return Permute(dim=self.dim, perm=inv)
        def undo(x: torch.Tensor, params: Any) -> torch.Tensor:
            d = sample_dim(x, self.dim, self.name)
            rng = keyed_rng(params, x.device, "permute")
            check_rows(x, rng.n, self.name)
            perm = rng.permutation(x.shape[d])
            positions = torch.arange(perm.shape[1], device=perm.device).expand_as(perm)
            inv = torch.empty_like(perm).scatter_(1, perm, positions)  # each row's inverse permutation
            return take_along(x, d, inv)

        return Inverted(self, undo)


@register
class Roll(Transform):
    """Circular shift along one dimension: entry ``i`` moves to ``(i + shift) mod N``
    (``torch.roll`` per sample)."""

    #: Composes as a group action (verified by ``eqaudit transforms --check``).
    group_action = True
    name = "roll"
    summary = "circular shift along one dimension (torch.roll), by a fixed or random amount"
    acts_on = "sequence (..., N, ...)"
    params = (
        Param("shift", int_or_range, 1, "positions to shift by (entry i moves to i + shift)", "int or [lo, hi]"),
        Param("dim", integer, -1, "dimension of one sample to roll (negative: from the end)", "int"),
    )

    @property
    def is_random(self) -> bool:
        return self.shift[0] != self.shift[1]

    def sample(self, rng: SampleRNG) -> torch.Tensor | None:
        if not self.is_random:
            return None
        return rng.child("shift").integers(self.shift[0], self.shift[1] + 1)

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        d = sample_dim(x, self.dim, self.name)
        if params is None:
            self._require_fixed()
            return torch.roll(x, self.shift[0], d)
        s = params.to(x.device)
        check_rows(x, s.shape[0], self.name)
        k = x.shape[d]
        if k == 0:
            return x
        # out[i] = x[(i - s) mod k]: the remainder on the shifts alone, then i - s lies in
        # (-k, k) and one comparison wraps it (the index is (n, k), broadcast over other dims)
        idx = torch.arange(k, device=x.device)[None, :] - torch.remainder(s, k)[:, None]
        return take_along(x, d, torch.where(idx < 0, idx + k, idx))

    def inverse(self) -> Transform:
        def undo(x: torch.Tensor, params: Any) -> torch.Tensor:
            if params is None:
                self._require_fixed()
                return self.apply(x, torch.full((x.shape[0],), -self.shift[0], dtype=torch.int64, device=x.device))
            return self.apply(x, -params)

        return Inverted(self, undo)


@register
class Flip(Transform):
    #: Composes as a group action (verified by ``eqaudit transforms --check``).
    group_action = True
    name = "flip"
    summary = "reverse the order of one dimension (torch.flip)"
    acts_on = "sequence (..., N, ...)"
    params = (Param("dim", integer, -1, "dimension of one sample to reverse (negative: from the end)", "int"),)

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        return torch.flip(x, (sample_dim(x, self.dim, self.name),))

    def inverse(self) -> Transform:
        return self
