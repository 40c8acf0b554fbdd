"""Parser of one ``checks[i]`` entry: its transforms, distance, thresholds and mode, and the
user-code references the checks name."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import transforms_zoo
from transforms_zoo import Transform, TransformError
from transforms_zoo._resolve import is_reference
from transforms_zoo.group import finite_group

from ..engine.distances import Distance, parse_distance
from ..errors import EqauditError
from ..io.yaml_source import YamlSource, join
from .fields import check_keys, describe_value, expect_mapping, parse_choice, parse_float
from .model import CheckSpec
from .worst_of import WorstOf, parse_worst_of

CHECK_KEYS = ("name", "input", "output", "both", "epsilon", "threshold", "weight", "distance", "group", "mode", "mask",
              "worst_of")
MASKS = ("none", "valid")
MODES = ("sample", "lie")


def _build_transform(src: YamlSource, value: Any, key: str, base_dir: Path) -> Transform:
    """The transform written at ``key``; the zoo's errors placed below that key."""
    try:
        return transforms_zoo.build(value, base_dir=str(base_dir))
    except TransformError as exc:
        sub = key
        if exc.key:
            sub = key + exc.key if exc.key.startswith("[") else f"{key}.{exc.key}"
        raise src.error(sub, exc.message, exc.hint) from None


def parse_check(
    src: YamlSource, raw: Any, i: int, default_distance: str | float, base_dir: Path
) -> CheckSpec:
    """Validate ``checks[i]``: its transforms, distance, thresholds, name, mode and mask."""
    where = f"checks[{i}]"
    c = expect_mapping(src, raw, where)
    check_keys(src, c, CHECK_KEYS, where)
    if "both" in c and ("input" in c or "output" in c):
        raise src.error(
            f"{where}.both", "'both' replaces 'input' and 'output'", "remove input/output, or remove both"
        )
    if "group" in c:
        t_in, t_out, both, group = _group_transforms(src, c, where, base_dir)
    elif "both" in c:
        t_in = t_out = _build_transform(src, c["both"], f"{where}.both", base_dir)
        both, group = True, None
    else:
        if "input" not in c:
            raise src.error(where, "missing 'input' (or 'both')", "e.g. input: rot90")
        t_in = _build_transform(src, c["input"], f"{where}.input", base_dir)
        t_out = _build_transform(src, c.get("output", "identity"), f"{where}.output", base_dir)
        both, group = False, None
    try:
        dist = parse_distance(c.get("distance", default_distance), base_dir)
    except EqauditError as exc:
        key = f"{where}.distance" if "distance" in c else "distance"
        raise src.error(key, exc.message, exc.hint) from None
    epsilon = parse_float(src, c.get("epsilon", 0.0), f"{where}.epsilon")
    threshold = parse_float(src, c["threshold"], f"{where}.threshold") if "threshold" in c else epsilon
    source = "spec" if "threshold" in c else "epsilon" if "epsilon" in c else "default"
    weight = parse_float(src, c.get("weight", 1.0), f"{where}.weight")
    default_name = t_in.describe() if t_out.name == "identity" or both else f"{t_in.describe()} -> {t_out.describe()}"
    if "worst_of" in c and isinstance(c["worst_of"], int) and not isinstance(c["worst_of"], bool):
        default_name += f" (worst of {c['worst_of']})"  # not the plain check's name
    elif "worst_of" in c and isinstance(c["worst_of"], Mapping):
        default_name += " (worst of grid)"
    name = _check_name(src, c.get("name"), where, default_name)
    mode = parse_choice(src, c.get("mode", "sample"), f"{where}.mode", MODES)
    if mode == "lie":
        _check_lie(src, c, where, t_in, t_out, both, group, dist)
    mask = parse_choice(src, c.get("mask", "none"), f"{where}.mask", MASKS)
    if mask == "valid" and (group is not None or mode == "lie"):
        raise src.error(f"{where}.mask", "'mask: valid' applies to sampled transforms, not to 'group' or "
                        "'mode: lie' checks", "remove mask")
    worst = _worst_of(src, c, where, group, mode, base_dir) if "worst_of" in c else None
    return CheckSpec(name, t_in, t_out, both, dist, epsilon, threshold, weight, group=group, mode=mode, mask=mask,
                     worst_of=worst, threshold_source=source)


def _worst_of(src: YamlSource, c: Mapping, where: str, group: Any, mode: str, base_dir: Path) -> WorstOf:
    """``worst_of`` draws a sampled check's random parameters several times (not a group or a Lie path)."""
    if group is not None or mode == "lie":
        raise src.error(f"{where}.worst_of", "'worst_of' takes the largest error over drawn transforms; a 'group' "
                        "check already evaluates every element and 'mode: lie' draws none", "remove worst_of")
    side = "both" if "both" in c else "input"
    return parse_worst_of(src, c["worst_of"], where, c[side], side, base_dir)


def _group_transforms(src: YamlSource, c: Mapping, where: str,
                      base_dir: Path) -> tuple[Transform, Transform, bool, Any]:
    """A ``group:`` check's input and output transforms, whether it is ``both``, and the group."""
    for other in ("input", "both"):
        if other in c:
            raise src.error(f"{where}.{other}", f"'group' replaces '{other}': every group element is the input "
                            "transform", "remove one of them")
    try:
        group = finite_group(c["group"])
    except ValueError as exc:
        raise src.error(f"{where}.group", str(exc)) from None
    out = c.get("output", "identity")
    if out not in ("identity", "same"):
        raise src.error(f"{where}.output", f"with 'group', output is 'identity' (invariance) or 'same' (the same "
                        f"element on the outputs), got {describe_value(out)}")
    both = out == "same"
    return group, group if both else _build_transform(src, "identity", f"{where}.output", base_dir), both, group


def _check_name(src: YamlSource, name: Any, where: str, default: str) -> str:
    """A check's name: printable text, or ``default`` (its transforms) when not given."""
    if name is None:
        return default
    if not isinstance(name, (str, int, float)) or isinstance(name, bool):
        raise src.error(f"{where}.name", f"expected a string, got {describe_value(name)}")
    if not str(name).strip():
        raise src.error(f"{where}.name", "the name is empty", "give the check a name, or remove the key")
    if any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in str(name)):
        raise src.error(f"{where}.name", f"the name {str(name)!r} contains control characters (newlines, tabs, "
                        "escapes), which break the table and the JUnit and Markdown reports", "use printable text")
    return str(name)


def _check_lie(src: YamlSource, c: Mapping, where: str, t_in: Transform, t_out: Transform, both: bool,
               group: Any, dist: Distance) -> None:
    """``mode: lie`` needs transforms with a one-parameter path and a norm as the distance."""
    if group is not None:
        raise src.error(f"{where}.mode", "'mode: lie' differentiates along a continuous path; a finite 'group' "
                        "has none", "remove mode or group")
    side = "both" if both else "input"
    if getattr(t_in, "lie_path", None) is None:
        raise src.error(f"{where}.{side}", f"transform {t_in.describe()} declares no one-parameter path, so it has "
                        "no Lie derivative", "use shift, rotate, scale or rotate3d (with axis)")
    if not both and t_out.name != "identity" and getattr(t_out, "lie_path", None) is None:
        raise src.error(f"{where}.output", f"transform {t_out.describe()} declares no one-parameter path")
    _check_generator(src, c, f"{where}.{side}", c.get(side), t_in)
    if not both and t_out.name != "identity":
        _check_generator(src, c, f"{where}.output", c.get("output"), t_out)
    if not (dist.name in ("l1", "l2", "linf") or dist.name.startswith("lp:")):
        key = f"{where}.distance" if "distance" in c else "distance"
        raise src.error(key, f"'mode: lie' takes the norm of a derivative: use l1, l2, linf or lp:P, "
                        f"not {dist.name}")


def _check_generator(src: YamlSource, c: Mapping, key: str, raw: Any, t: Transform) -> None:
    """A Lie path whose generator is zero (shift by (0, 0), rotate by 0 degrees, scale by 1) is an
    error at the transform's key: its derivative is 0 or taken along a made-up direction."""
    find = getattr(t, "lie_generator_error", None)
    error = find() if callable(find) else None
    if error is None:
        return
    if isinstance(raw, dict) and len(raw) == 1:  # {name: {params}}: below the name, at the parameter
        key = join(key, next(iter(raw)))
        if error.key:
            key = join(key, error.key)
    raise src.error(key, error.message, error.hint)


def code_references(raw_checks: list, distance: Any) -> dict[str, str]:
    """The ``module:attr`` references of a validated spec's checks and distance, by key."""
    refs: dict[str, str] = {}
    if _is_code(distance, as_distance=True):
        refs["distance"] = distance
    for i, check in enumerate(raw_checks):
        for side in ("input", "output", "both", "distance"):
            if side in check:
                refs.update(_references_in(check[side], f"checks[{i}].{side}", side == "distance"))
    return refs


def _references_in(value: Any, key: str, as_distance: bool) -> dict[str, str]:
    if isinstance(value, list):
        found: dict[str, str] = {}
        for j, item in enumerate(value):
            found.update(_references_in(item, join(key, j), as_distance))
        return found
    return {key: value} if _is_code(value, as_distance=as_distance) else {}


def _is_code(value: Any, *, as_distance: bool) -> bool:
    """Whether a spec value names user code (``lp:P`` and ``topk_flip:K`` are distances, not code)."""
    return is_reference(value) and not (as_distance and value.startswith(("lp:", "topk_flip:")))
