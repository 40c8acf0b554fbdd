"""Calling the model: one checked forward pass, split into calls of at most ``max_rows`` rows,
with failures located at the spec key that produced the batch and out-of-memory left to the
caller's backoff.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

from ..errors import first_line
from .estimator import BLOCK


class Locator(Protocol):
    """Where errors point: a spec or a fine-tune config (``error(key, message, hint)``, ``file``)."""

    file: Any

    def error(self, key: str | None, message: str, hint: str | None = None) -> Exception: ...


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory failure (the chunk loop backs off on it)."""
    return isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in str(exc).lower()


def forward_once(model: Any, x: torch.Tensor, locate: Locator, key: str) -> torch.Tensor:
    """``model(x)``, checked: a tensor with the batch dimension first; other failures raise
    ``locate.error(key, ...)`` (out-of-memory is re-raised as it is)."""
    try:
        y = model(x)
    except Exception as exc:
        if is_oom(exc):
            raise
        raise locate.error(
            key, f"the model failed on a batch of shape {list(x.shape)}: {first_line(exc)}",
            "check input.shape (one sample, no batch dimension) and the transforms",
        ) from None
    if not isinstance(y, torch.Tensor):
        raise locate.error(key, f"the model returned {type(y).__name__}, expected a tensor")
    if y.dim() == 0 or y.shape[0] != x.shape[0]:
        raise locate.error(key, f"the model returned shape {list(y.shape)} for a batch of {x.shape[0]}",
                           "the model must keep the batch dimension first")
    if y.numel() == 0 and x.shape[0] > 0:
        raise locate.error(key, f"the model's output has no elements per sample (shape {list(y.shape)}): every "
                           "distance would be 0 and every check would pass", "the model must return its outputs")
    return y


def batch_dependent_width(locate: Locator, model: Any, n: int, y_n: torch.Tensor, m: int,
                          y_m: torch.Tensor) -> Exception:
    """The error of a model whose output per sample depends on the batch size (at ``model``)."""
    inner = getattr(model, "_orig_mod", getattr(model, "model", model))  # under torch.compile / autocast
    name = getattr(inner, "__name__", type(inner).__name__)
    return locate.error(
        "model", f"the model ({name}) returns outputs of shape {list(y_n.shape[1:])} per sample for a batch of "
        f"{n} but {list(y_m.shape[1:])} for a batch of {m}: its output depends on the batch size",
        "each sample's output must not depend on the batch (e.g. no reshape by the batch size)")


def row_pieces(x: torch.Tensor, max_rows: int | None) -> list[torch.Tensor]:
    """``x`` in pieces of at most ``max_rows`` rows (whole when ``max_rows`` is None); a last piece
    below one statistics block joins the one before it."""
    n = x.shape[0]
    if max_rows is None or n <= max_rows:
        return [x]
    starts = list(range(0, n, max_rows))
    if n - starts[-1] < BLOCK:
        starts.pop()
    return [x[a:b] for a, b in zip(starts, starts[1:] + [n])]


def forward_rows(model: Any, x: torch.Tensor, locate: Locator, key: str, max_rows: int | None) -> torch.Tensor:
    """``model(x)`` in calls of at most ``max_rows`` rows (see :func:`row_pieces`)."""
    pieces = row_pieces(x, max_rows)
    if len(pieces) == 1:
        return forward_once(model, x, locate, key)
    return torch.cat([forward_once(model, piece, locate, key) for piece in pieces])


def packed(items: Sequence[Any], max_rows: int | None) -> list[list[Any]]:
    """``items`` (each with ``rows_in_call``) in runs of consecutive items whose rows fit one call
    of ``max_rows`` rows (all in one run when ``max_rows`` is None; an item larger than
    ``max_rows`` in a run of its own). A run below one statistics block of rows joins its
    neighbour, so that no call is smaller than the batch sizes the report's bit-reproducibility
    is promised for."""
    if max_rows is None:
        return [list(items)]
    runs: list[list[Any]] = []
    rows = 0
    for it in items:
        n = it.rows_in_call
        if runs and (rows + n <= max_rows or rows < BLOCK):
            runs[-1].append(it)
            rows += n
        else:
            runs.append([it])
            rows = n
    if len(runs) > 1 and rows < BLOCK:
        runs[-2].extend(runs.pop())
    return runs
