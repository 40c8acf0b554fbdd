"""The zoo's own error type and message helpers, so the zoo depends on nothing above it.

Callers (eqaudit's spec parser) map :class:`TransformError` to their own errors, placing ``key``
below the key that holds the transform.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class TransformError(ValueError):
    """A transform written wrongly: ``key`` is the path below the transform (``rotate.degrees``)."""

    def __init__(self, message: str, *, key: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key
        self.hint = hint

    def __str__(self) -> str:
        key = f"{self.key}: " if self.key else ""
        hint = f" ({self.hint})" if self.hint else ""
        return f"{key}{self.message}{hint}"


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A hint naming the closest valid choice, or listing the choices when none is close."""
    options = sorted(set(choices))
    close = difflib.get_close_matches(str(word), options, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    if len(options) <= 12:
        return "expected one of: " + ", ".join(options)
    return None


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` of an exception raised by user or library code."""
    text = str(exc).strip()
    head = text.splitlines()[0] if text else ""
    more = " …" if len(text.splitlines()) > 1 else ""
    return f"{type(exc).__name__}: {head}{more}" if head else type(exc).__name__


def check_rows(x: torch.Tensor, rows: int, name: str) -> None:
    """Refuse parameters drawn for ``rows`` samples applied to a batch ``x`` of another size."""
    if rows != x.shape[0]:
        raise TransformError(f"'{name}' got parameters for {rows} samples but a batch of shape {list(x.shape)}")
