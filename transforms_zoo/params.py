"""Declared transform parameters (:class:`Param`) and the reusable parsers of their YAML values.

A parser turns the YAML value into the value a transform stores, raising ``ValueError`` with a
readable message when the value is wrong. Defaults go through the same parser as given values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: The default of a parameter that must be given.
REQUIRED: Any = object()


@dataclass(frozen=True)
class Param:
    """A declared transform parameter: name, parser, default and one line of documentation.

    ``parse`` turns the YAML value into the value the transform stores, raising ``ValueError``
    with a readable message when the value is wrong. A default of None means "not given" and is
    stored as None; any other default is parsed like a given value.
    """

    name: str
    parse: Callable[[Any], Any]
    default: Any = REQUIRED
    doc: str = ""
    type_doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def value(self, given: dict[str, Any]) -> Any:
        """The parsed value of this parameter from the given keyword arguments (or its default).

        Raises ``ValueError`` for a wrong value, or for a required one that is missing.
        """
        if self.name in given:
            return self.parse(given[self.name])
        if self.required:
            raise ValueError(f"parameter '{self.name}' is required")
        return None if self.default is None else self.parse(self.default)


# -- reusable parsers ---------------------------------------------------------------------------
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def number(v: Any) -> float:
    """A finite number."""
    if not _is_number(v):
        raise ValueError(f"expected a number, got {v!r}")
    return float(v)


def positive(v: Any) -> float:
    """A finite number > 0."""
    x = number(v)
    if x <= 0:
        raise ValueError(f"expected a number > 0, got {v!r}")
    return x


#: Largest magnitude of an integer transform parameter (pixel counts, dimensions, turns).
INT_LIMIT = 2**30


def integer(v: Any) -> int:
    """An integer (a float like 2.0 is refused: pixel counts are exact)."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"expected an integer, got {v!r}")
    if abs(v) > INT_LIMIT:
        raise ValueError(f"{v} is out of range (at most {INT_LIMIT} in magnitude)")
    return int(v)


def boolean(v: Any) -> bool:
    """true or false (not 0 or 1)."""
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {v!r}")
    return v


def number_or_range(v: Any) -> tuple[float, float]:
    """A number ``a`` (stored as ``(a, a)``) or a ``[lo, hi]`` range drawn uniformly."""
    if _is_number(v):
        return (float(v), float(v))
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(x) for x in v):
        lo, hi = float(v[0]), float(v[1])
        if lo > hi:
            raise ValueError(f"range [{v[0]}, {v[1]}] has lo > hi")
        return (lo, hi)
    raise ValueError(f"expected a number or a [lo, hi] range, got {v!r}")


def int_or_range(v: Any) -> tuple[int, int]:
    """An integer ``a`` (stored as ``(a, a)``) or an inclusive ``[lo, hi]`` integer range."""
    if isinstance(v, int) and not isinstance(v, bool):
        return (integer(v), integer(v))
    if (
        isinstance(v, (list, tuple))
        and len(v) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
    ):
        if v[0] > v[1]:
            raise ValueError(f"range [{v[0]}, {v[1]}] has lo > hi")
        for x in v:
            integer(x)
        return (int(v[0]), int(v[1]))
    raise ValueError(f"expected an integer or an inclusive [lo, hi] integer range, got {v!r}")


def one_of(*choices: str) -> Callable[[Any], str]:
    """A parser accepting exactly one of ``choices``."""
    def parse(v: Any) -> str:
        if v not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {v!r}")
        return str(v)

    parse.__doc__ = "one of " + ", ".join(choices)
    return parse


