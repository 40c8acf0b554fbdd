"""The distance registry: per-sample distances between two batches of model outputs.

Every distance maps ``a, b`` of shape ``(n, ...)`` to a tensor of shape ``(n,)``. They compute in
the dtype they are given (the audit engine passes float64; the regularizer keeps the model's dtype
so gradients flow at its precision).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from transforms_zoo._resolve import ReferenceError_, is_reference, resolve_reference

from ..errors import EqauditError, did_you_mean

PerRow = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def lp(p: float) -> PerRow:
    """The l_p norm of the flattened difference, ``p >= 1`` (``inf`` for the max norm)."""

    def dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(_flat(a) - _flat(b), ord=p, dim=1)

    return dist


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``||a - b|| / (||a|| + ||b||)``: scale-free, in [0, 1]; 0 where both are zero."""
    a, b = _flat(a), _flat(b)
    num = torch.linalg.vector_norm(a - b, dim=1)
    den = torch.linalg.vector_norm(a, dim=1) + torch.linalg.vector_norm(b, dim=1)
    # 0 where both are zero; NaN or Inf outputs stay non-finite (a NaN denominator is not "> 0")
    zero = den == 0
    return torch.where(zero, torch.zeros_like(num), num / torch.where(zero, torch.ones_like(den), den))


def kl_logits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(a) || softmax(b))`` over the last dimension, summed over any other positions."""
    la = F.log_softmax(a, dim=-1)
    lb = F.log_softmax(b, dim=-1)
    kl = (la.exp() * (la - lb)).sum(dim=-1)
    return kl.reshape(kl.shape[0], -1).sum(dim=1)


def cross_entropy_logits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The original package's ``cross_entropy_logits``: ``||log_softmax(a) - log_softmax(b)||_2``."""
    return torch.linalg.vector_norm(
        _flat(F.log_softmax(a, dim=-1)) - _flat(F.log_softmax(b, dim=-1)), dim=1
    )


def cross_entropy(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The original package's ``cross_entropy`` on probabilities: ``||log a - log b||_2`` (NaN kept)."""
    return torch.linalg.vector_norm(_flat(torch.log(a)) - _flat(torch.log(b)), dim=1)


def _classes(a: torch.Tensor, name: str) -> None:
    if a.dim() < 2 or a.shape[-1] < 1:
        raise EqauditError(f"distance '{name}' compares class scores, but one output has shape "
                           f"{list(a.shape[1:])}", hint="use it on outputs (n, classes) or (n, ..., classes)")


def _position_mean(flips: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The 0/1 ``flips`` (``(n, ...)``) averaged over positions: one value per sample."""
    dtype = like.dtype if like.is_floating_point() else torch.float64
    return flips.reshape(flips.shape[0], -1).to(dtype).mean(dim=1)


def label_flip(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 where the argmax over the last dimension differs, else 0 (the first index among ties);
    averaged over the positions of dense outputs ``(n, ..., classes)``."""
    _classes(a, "label_flip")
    return _position_mean(a.argmax(dim=-1) != b.argmax(dim=-1), a)


def topk_flip(k: int) -> PerRow:
    """1 where either side's top-1 class is outside the other side's top ``k`` (symmetric), else 0;
    averaged over the positions of dense outputs. ``topk_flip:1`` is ``label_flip``."""

    def dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        _classes(a, f"topk_flip:{k}")
        if k > a.shape[-1]:
            raise EqauditError(f"'topk_flip:{k}': the outputs have {a.shape[-1]} classes, fewer than K = {k}",
                               hint=f"use K <= {a.shape[-1]}")
        top_a, top_b = a.argmax(dim=-1, keepdim=True), b.argmax(dim=-1, keepdim=True)
        a_in_b = (b.topk(k, dim=-1).indices == top_a).any(dim=-1)
        b_in_a = (a.topk(k, dim=-1).indices == top_b).any(dim=-1)
        return _position_mean(~(a_in_b & b_in_a), a)

    return dist


_NAMED: dict[str, PerRow] = {
    "l1": lp(1.0),
    "l2": lp(2.0),
    "linf": lp(math.inf),
    "relative_l2": relative_l2,
    "kl_logits": kl_logits,
    "cross_entropy_logits": cross_entropy_logits,
    "cross_entropy": cross_entropy,
    "label_flip": label_flip,
}

DISTANCE_NAMES = tuple(sorted([*_NAMED, "lp:P", "topk_flip:K", "module:callable"]))


@dataclass(frozen=True)
class Distance:
    """A named per-sample distance."""

    name: str
    fn: PerRow

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.fn(a, b)

    @property
    def batchable(self) -> bool:
        """True for the built-in row-wise distances: rows of several checks may share one call."""
        return not isinstance(self.fn, _UserDistance)

    @property
    def indicator(self) -> bool:
        """True for the decision-flip distances, whose per-sample errors are 0/1 on non-dense
        outputs: their interval is then the Wilson score interval of a proportion."""
        return self.name == "label_flip" or self.name.startswith("topk_flip:")


class _UserDistance:
    """A user callable returning a scalar or one value per row; scalars are evaluated row by row."""

    def __init__(self, fn: Callable[..., torch.Tensor], ref: str) -> None:
        self.fn = fn
        self.ref = ref
        self.rowwise: bool | None = None

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        n = a.shape[0]
        if self.rowwise is not True:
            out = torch.as_tensor(self.fn(a, b))
            if out.dim() == 1 and out.shape[0] == n:
                self.rowwise = False
                return out
            if out.numel() != 1:
                raise EqauditError(
                    f"distance '{self.ref}' returned shape {tuple(out.shape)} for a batch of {n}",
                    hint="return a scalar or one value per row",
                )
            if n == 1:
                return out.reshape(1)
            self.rowwise = True
        rows = [torch.as_tensor(self.fn(a[i : i + 1], b[i : i + 1])).reshape(()) for i in range(n)]
        return torch.stack(rows)


def parse_distance(spec: str | int | float | Callable, base_dir: str | Path | None = None) -> Distance:
    """Resolve a distance given as a name, ``lp:P``, an int or float ``p``, ``'inf'``, or a callable."""
    if callable(spec) and not isinstance(spec, str):
        name = getattr(spec, "__name__", type(spec).__name__)
        return Distance(name, _UserDistance(spec, name))
    if isinstance(spec, bool):
        raise EqauditError(f"distance must be a name or a number p >= 1, got {spec!r}")
    if isinstance(spec, (int, float)):
        p = float(spec)
        if not (p >= 1):
            raise EqauditError(f"distance p must be >= 1 (a norm), got {spec!r}")
        name = "linf" if math.isinf(p) else f"lp:{_num(p)}"
        return Distance(name, lp(p))
    if not isinstance(spec, str):
        raise EqauditError(f"distance must be a name, 'lp:P' or 'module:callable', got {spec!r}")
    if spec in _NAMED:
        return Distance(spec, _NAMED[spec])
    if spec == "inf":
        return Distance("linf", _NAMED["linf"])
    if spec.startswith("lp:"):
        try:
            p = float(spec[3:])
        except ValueError:
            raise EqauditError(f"'{spec}': P must be a number >= 1 or inf", hint="e.g. lp:3") from None
        if not (p >= 1):
            raise EqauditError(f"'{spec}': P must be >= 1 (a norm)", hint="e.g. lp:3")
        return Distance(f"lp:{_num(p)}", lp(p))
    if spec.startswith("topk_flip:"):
        text = spec[len("topk_flip:"):]
        if not (text.isdigit() and int(text) >= 1):
            raise EqauditError(f"'{spec}': K must be an integer >= 1 (the top K classes)", hint="e.g. topk_flip:5")
        return Distance(f"topk_flip:{int(text)}", topk_flip(int(text)))
    if is_reference(spec):
        try:
            fn = resolve_reference(spec, base_dir)
        except ReferenceError_ as exc:
            raise EqauditError(str(exc)) from None
        if not callable(fn):
            raise EqauditError(f"distance '{spec}' is not callable")
        return Distance(spec, _UserDistance(fn, spec))
    raise EqauditError(f"unknown distance '{spec}'", hint=did_you_mean(spec, DISTANCE_NAMES))


def _num(p: float) -> str:
    return "inf" if math.isinf(p) else (str(int(p)) if p.is_integer() else str(p))
