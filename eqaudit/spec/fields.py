"""Public parsers of spec fields, shared by the spec and the fine-tune config: each validates one
YAML value and raises an :class:`EqauditError` at its key path and line."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import EqauditError, did_you_mean
from ..io.yaml_source import YamlSource, join

#: Largest Monte Carlo sample count: the block tables hold 5 float64 per 64 samples and check.
MAX_SAMPLES = 2**31

#: Largest integer a spec may give (sample counts, seeds, sizes): 2**40.
INT_MAX = 2**40


def check_keys(src: YamlSource, mapping: Mapping, allowed: Iterable[str], where: str) -> None:
    """Refuse a key of ``mapping`` (found at key path ``where``) that is not in ``allowed``."""
    allowed = tuple(allowed)
    for key in mapping:
        if key not in allowed:
            k = join(where, key)
            raise src.error(k, f"unknown key '{key}'", did_you_mean(str(key), allowed))


def expect_mapping(src: YamlSource, value: Any, where: str) -> Mapping:
    """``value`` when it is a mapping, else an error at ``where``."""
    if not isinstance(value, dict):
        raise src.error(where, f"expected a mapping, got {describe_value(value)}")
    return value


def describe_value(v: Any) -> str:
    """How an error message names a YAML value: ``a list``, ``the string 'x'``, ``nothing (null)``."""
    if v is None:
        return "nothing (null)"
    return {dict: "a mapping", list: "a list", str: f"the string {v!r}", bool: f"{v}"}.get(type(v), repr(v))


def check_seed(seed: int) -> int:
    """A seed given as an option (``--seed``): the spec's own range, so that no two seeds collide."""
    if seed < 0 or seed > INT_MAX:
        raise EqauditError(f"must be between 0 and {INT_MAX}, got {seed}", key="--seed")
    return int(seed)


def parse_int(src: YamlSource, v: Any, key: str, *, minimum: int = 0, maximum: int = INT_MAX) -> int:
    """An integer (not a bool) in ``[minimum, maximum]``."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise src.error(key, f"expected an integer, got {describe_value(v)}")
    if v < minimum:
        raise src.error(key, f"must be >= {minimum}, got {v}")
    if v > maximum:
        raise src.error(key, f"{v} is too large (at most {maximum})")
    return v


def parse_float(src: YamlSource, v: Any, key: str, *, minimum: float | None = 0.0) -> float:
    """A finite number (not a bool), at least ``minimum`` unless that is None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise src.error(key, f"expected a finite number, got {describe_value(v)}")
    if minimum is not None and v < minimum:
        raise src.error(key, f"must be >= {minimum}, got {v}")
    return float(v)


def parse_choice(src: YamlSource, v: Any, key: str, choices: tuple[str, ...]) -> str:
    """``v`` when it is one of ``choices``, else an error at ``key`` naming them (and the closest)."""
    if v not in choices:
        raise src.error(key, f"expected {', '.join(choices[:-1])} or {choices[-1]}, got {describe_value(v)}",
                        did_you_mean(str(v), choices))
    return v


def parse_bool(src: YamlSource, v: Any, key: str) -> bool:
    """``true`` or ``false`` (not a number or a string)."""
    if not isinstance(v, bool):
        raise src.error(key, f"expected true or false, got {describe_value(v)}")
    return v


def resolve_path(base_dir: Path, text: str) -> Path:
    """A path from the spec: ``~`` expanded, relative paths against ``base_dir`` (the spec's folder)."""
    p = Path(text).expanduser()
    return p if p.is_absolute() else base_dir / p
