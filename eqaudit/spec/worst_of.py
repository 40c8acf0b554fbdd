"""Parser of a check's ``worst_of`` key: K independent draws of the check's random parameters, or
an exhaustive grid over one numeric parameter of its input transform (:class:`WorstOf`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import transforms_zoo
from transforms_zoo import Transform, TransformError

from ..io.yaml_source import YamlSource
from .fields import describe_value

#: The most draws or grid points per sample (each is a transformed copy in the fused forward pass).
MAX_DRAWS = 4096


@dataclass(frozen=True)
class WorstOf:
    """Per sample, the largest error over ``k`` draws: independent draws of the check's random
    parameters (``param`` None), or the input transforms of a grid over ``param`` (``values``)."""

    k: int
    param: str | None = None
    values: tuple[float, ...] = ()
    #: Grid: the check's input transform with ``param`` fixed to each value.
    transforms: tuple[Transform, ...] = ()

    def describe(self) -> str:
        if self.param is None:
            return f"worst of {self.k} draws"
        return f"worst of {self.param} in [{self.values[0]:g}, {self.values[-1]:g}] ({self.k} points)"


def parse_worst_of(src: YamlSource, raw: Any, where: str, transform_raw: Any, side: str,
                   base_dir: Path) -> WorstOf:
    """Validate ``{where}.worst_of``: an integer K >= 1, or ``{grid: {param: [lo, hi, count]}}``
    over a numeric parameter of the check's input transform (``transform_raw``, at ``side``)."""
    key = f"{where}.worst_of"
    if isinstance(raw, int) and not isinstance(raw, bool):
        if not 1 <= raw <= MAX_DRAWS:
            raise src.error(key, f"K must be an integer from 1 to {MAX_DRAWS}, got {raw}", "e.g. worst_of: 10")
        return WorstOf(raw)
    if not isinstance(raw, Mapping) or set(raw) != {"grid"}:
        raise src.error(key, f"expected an integer K >= 1 or {{grid: {{param: [lo, hi, count]}}}}, got "
                        f"{describe_value(raw)}", "e.g. worst_of: 10, or worst_of: {grid: {degrees: [-30, 30, 61]}}")
    grid = raw["grid"]
    if not isinstance(grid, Mapping) or len(grid) != 1:
        raise src.error(f"{key}.grid", f"a grid varies exactly one parameter, got {describe_value(grid)}",
                        "e.g. grid: {degrees: [-30, 30, 61]}")
    param, spec = next(iter(grid.items()))
    values = _grid_values(src, f"{key}.grid.{param}", spec)
    name, params = _zoo_transform(src, f"{where}.{side}", transform_raw, key)
    _check_param(src, f"{key}.grid.{param}", name, str(param))
    transforms = []
    for v in values:
        value: Any = int(v) if float(v).is_integer() else v
        try:
            transforms.append(transforms_zoo.build({name: {**params, str(param): value}}, base_dir=str(base_dir)))
        except TransformError as exc:
            raise src.error(f"{key}.grid.{param}", f"parameter '{param}' of {name} is not numeric, or does not take "
                            f"the value {value!r}: {exc.message}", "grid a numeric parameter such as degrees") from None
    return WorstOf(len(values), str(param), tuple(values), tuple(transforms))


def _grid_values(src: YamlSource, key: str, spec: Any) -> list[float]:
    """``[lo, hi, count]``: ``count`` evenly spaced values from ``lo`` to ``hi``."""
    ok = isinstance(spec, list) and len(spec) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in spec)
    if not ok or not float(spec[2]).is_integer() or not 1 <= spec[2] <= MAX_DRAWS or spec[0] > spec[1]:
        raise src.error(key, f"expected [lo, hi, count] with lo <= hi and an integer count from 1 to {MAX_DRAWS}, "
                        f"got {describe_value(spec)}", "e.g. [-30, 30, 61]")
    lo, hi, count = float(spec[0]), float(spec[1]), int(spec[2])
    if count == 1:
        return [lo]
    return [lo + (hi - lo) * i / (count - 1) for i in range(count)]


def _zoo_transform(src: YamlSource, side_key: str, raw: Any, key: str) -> tuple[str, dict[str, Any]]:
    """The zoo name and parameters of the transform a grid varies (one zoo transform)."""
    if isinstance(raw, str) and ":" not in raw:
        return raw, {}
    if isinstance(raw, Mapping) and len(raw) == 1:
        name, params = next(iter(raw.items()))
        return str(name), dict(params or {})
    raise src.error(key, f"a grid varies a parameter of one zoo transform, but {side_key} is "
                    f"{describe_value(raw)}", "use worst_of: K (random draws) for compositions and user code")


def _check_param(src: YamlSource, key: str, name: str, param: str) -> None:
    declared = [p.name for p in transforms_zoo.get(name).params]
    if param not in declared:
        raise src.error(key, f"transform {name} has no parameter '{param}'",
                        "its parameters: " + (", ".join(declared) or "none"))
