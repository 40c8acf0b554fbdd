"""The spec parser: a YAML document (or a Python mapping) -> a validated, immutable :class:`Spec`.

Every error names the file, the key path (``checks[2].input.rotate.degrees``) and the line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..io.yaml_source import YamlSource, load_yaml
from .checks import code_references, parse_check
from .fields import MAX_SAMPLES, check_keys, describe_value, parse_int
from .model import Spec
from .sections import parse_input, parse_layer_options, parse_model

SPEC_KEYS = ("model", "input", "distance", "samples", "num_funcs", "seed", "checks", "layers")


def parse_spec(
    src: YamlSource, *, base_dir: Path | None = None, extra_keys: Iterable[str] = ()
) -> Spec:
    """Validate a parsed YAML document as a spec. ``extra_keys`` are allowed top-level keys that a
    caller (the fine-tune config) parses itself."""
    base = base_dir if base_dir is not None else (Path(src.file).parent if src.file else Path.cwd())
    if not isinstance(src.data, dict):
        raise src.error(None, f"a spec is a YAML mapping with keys {', '.join(SPEC_KEYS)}; got {describe_value(src.data)}")
    d = src.data
    check_keys(src, d, (*SPEC_KEYS, *extra_keys), "")
    model = parse_model(src, d.get("model"), base)
    inp = parse_input(src, d.get("input"), base, require=True)
    distance = d.get("distance", "l2")
    if not isinstance(distance, (str, int, float)) or isinstance(distance, bool):
        raise src.error("distance", f"expected a distance name, got {describe_value(distance)}")
    samples = parse_int(src, d.get("samples", 1024), "samples", minimum=1, maximum=MAX_SAMPLES)
    seed = parse_int(src, d.get("seed", 0), "seed", minimum=0)
    raw_checks = d.get("checks")
    if not isinstance(raw_checks, list) or not raw_checks:
        raise src.error("checks", "expected a non-empty list of checks", "e.g. checks: [{input: rot90}]")
    checks = [parse_check(src, c, i, distance, base) for i, c in enumerate(raw_checks)]
    seen: dict[str, int] = {}
    for i, c in enumerate(checks):
        if c.name in seen:
            raise src.error(
                f"checks[{i}].name",
                f"check name '{c.name}' is used twice (also checks[{seen[c.name]}])",
                "give each check a distinct 'name'",
            )
        seen[c.name] = i
    nf = d.get("num_funcs", "all")
    num_funcs: int | None
    if nf == "all":
        num_funcs = None
    else:
        num_funcs = parse_int(src, nf, "num_funcs", minimum=1)
        if num_funcs > len(checks):
            raise src.error("num_funcs", f"{num_funcs} exceeds the number of checks ({len(checks)})", "use 'all'")
        if num_funcs == len(checks):
            num_funcs = None
    layers, per_channel = parse_layer_options(src, d.get("layers"))
    return Spec(model, inp, tuple(checks), str(distance), samples, num_funcs, seed, layers=layers,
                per_channel=per_channel, file=src.file,
                base_dir=base, lines=src.lines, code_refs=code_references(raw_checks, distance))


def load_spec(path: str | Path, *, extra_keys: Iterable[str] = ()) -> Spec:
    """Read and validate a spec file."""
    src = load_yaml(path)
    return parse_spec(src, base_dir=Path(path).resolve().parent, extra_keys=extra_keys)


def spec_from_dict(data: Mapping[str, Any], base_dir: str | Path | None = None) -> Spec:
    """Validate a spec given as a Python mapping (the same schema as the YAML)."""
    src = YamlSource(dict(data), "<spec>")
    return parse_spec(src, base_dir=Path(base_dir) if base_dir else Path.cwd())
