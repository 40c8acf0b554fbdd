"""The audit spec: YAML -> a validated, immutable :class:`Spec`.

Every error names the file, the key path (``checks[2].input.rotate.degrees``) and the line.
"""

from __future__ import annotations

import dataclasses
import math
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import transforms_zoo
from transforms_zoo import Transform, TransformError
from transforms_zoo._resolve import is_reference, reference_file

from .audit.distances import Distance, parse_distance
from .errors import EqauditError, did_you_mean
from .io.yaml_source import YamlSource, join, load_yaml

SPEC_KEYS = ("model", "input", "distance", "samples", "num_funcs", "seed", "checks", "layers")
MODEL_KEYS = ("factory", "kwargs", "checkpoint")
INPUT_KEYS = ("shape", "bounds", "data", "dtype", "sampling")
#: At most this many elements in one sample (2^31: ~8 GiB of float32 for a single point).
MAX_SAMPLE_ELEMENTS = 1 << 31
CHECK_KEYS = ("name", "input", "output", "both", "epsilon", "threshold", "weight", "distance", "group", "mode", "mask")
MASKS = ("none", "valid")
MODES = ("sample", "lie")
DTYPES = ("float16", "bfloat16", "float32", "float64")
SAMPLINGS = ("random", "sequential", "sobol")
SOBOL_MAX_DIM = 21201  # torch.quasirandom.SobolEngine.MAXDIM


@dataclass(frozen=True)
class ModelSpec:
    """How to build the model: a factory (``module:callable``) and/or a checkpoint file."""

    factory: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None


@dataclass(frozen=True)
class DataRef:
    """Points drawn from a tensor stored under ``key`` in a safetensors file."""

    path: Path
    key: str


@dataclass(frozen=True)
class InputSpec:
    """The input domain: a uniform box over ``shape``, or rows of a data tensor."""

    shape: tuple[int, ...]
    bounds: Any = (0.0, 1.0)  # [lo, hi] or nested lists broadcast to shape + (2,)
    data: DataRef | None = None
    dtype: str | None = None  # None: the model's parameter dtype
    sampling: str = "random"  # data: "random" (with replacement) or "sequential"; box: "random" or "sobol"


@dataclass(frozen=True)
class CheckSpec:
    """One equivariance check: ``dist(output(f(x)), f(input(x)))``."""

    name: str
    input: Transform
    output: Transform
    both: bool
    distance: Distance
    epsilon: float = 0.0
    threshold: float = 0.0
    weight: float = 1.0
    #: ``group:`` checks: the finite group whose every element is evaluated (a GroupTransform).
    group: Any = None
    #: ``sample`` (the error of drawn transforms) or ``lie`` (the Lie derivative along a path).
    mode: str = "sample"
    #: ``valid``: compare only the pixels that both transforms keep inside the frame.
    mask: str = "none"
    #: The name whose random stream draws the check's parameters (None: ``name``). Sweeps keep the
    #: swept check's stream, so every value sees the same draws of the other parameters.
    stream: str | None = None

    @property
    def stream_name(self) -> str:
        return self.stream if self.stream is not None else self.name

    @property
    def input_text(self) -> str:
        return self.input.describe()

    @property
    def output_text(self) -> str:
        return self.output.describe()


@dataclass(frozen=True)
class Spec:
    """A validated audit spec."""

    model: ModelSpec
    input: InputSpec
    checks: tuple[CheckSpec, ...]
    distance: str = "l2"
    samples: int = 1024
    num_funcs: int | None = None  # None: every check on every sample
    seed: int = 0
    #: Per-layer attribution: module names, "all" (every leaf module), or None.
    layers: tuple[str, ...] | str | None = None
    file: str | None = None
    base_dir: Path = field(default_factory=Path.cwd)
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)
    #: User code named by the spec: key (``checks[0].input``, ``distance``) -> ``module:attr`` text.
    code_refs: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def input_files(self) -> dict[str, Path]:
        """Every file an audit of this spec reads, by the key that names it, as resolved paths.

        Keys: ``spec`` (the spec file, when there is one), ``model.checkpoint``, ``input.data``,
        ``model.factory`` and the user-code references (``distance``, ``checks[i].distance``,
        ``checks[i].input`` / ``.output`` / ``.both``, ``checks[i].input[j]`` inside a list) whose
        code is a file (``file.py:attr``, or ``module:attr`` found beside the spec or on
        ``sys.path``). Outputs compare against these so that no output overwrites an input.
        """
        files: dict[str, Path] = {}
        if self.file and Path(self.file).is_file():
            files["spec"] = Path(self.file)
        if self.model.checkpoint is not None:
            files["model.checkpoint"] = self.model.checkpoint
        if self.input.data is not None:
            files["input.data"] = self.input.data.path
        refs = dict(self.code_refs)
        if isinstance(self.model.factory, str):
            refs["model.factory"] = self.model.factory
        for key, ref in refs.items():
            path = reference_file(ref, self.base_dir)
            if path is not None:
                files[key] = path
        return {key: path.resolve() for key, path in files.items()}

    def _source(self) -> YamlSource:
        """The spec's file and key lines, to locate errors."""
        return YamlSource(None, self.file or "<spec>", dict(self.lines))

    def error(self, key: str | None, message: str, hint: str | None = None) -> EqauditError:
        """An :class:`EqauditError` located at ``key`` of this spec's file."""
        return self._source().error(key, message, hint)

    def build_model(self, checkpoint: str | Path | None = None, *, trust_checkpoint: bool = False) -> Any:
        """The model of the ``model`` block (``checkpoint`` overrides ``model.checkpoint``). Errors
        at its ``model.*`` keys carry their line in the spec (not a given checkpoint's errors).

        The factory runs under ``torch.manual_seed(self.seed)`` in a forked RNG, so a model built
        without a checkpoint starts from the same weights on every run and entry point (measure,
        sweep, ``audit()``, ``assert_equivariant``, finetune), and the caller's RNG is untouched."""
        import torch

        from .io.checkpoint import load_model

        cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        try:
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(self.seed)
                return load_model(
                    Path(checkpoint) if checkpoint is not None else self.model.checkpoint,
                    factory=self.model.factory,
                    kwargs=dict(self.model.kwargs),
                    base_dir=self.base_dir,
                    trust_checkpoint=trust_checkpoint,
                    source=self.file,
                )
        except EqauditError as exc:
            from_spec = exc.file == self.file and (checkpoint is None or exc.key != "model.checkpoint")
            if from_spec and exc.key:
                exc.located(line=self._source().line_of(exc.key))
            raise

    def check_index(self, name: str) -> int:
        return next(i for i, c in enumerate(self.checks) if c.name == name)

    def replace(self, **changes: Any) -> Spec:
        """A copy with some fields changed (command-line overrides)."""
        return dataclasses.replace(self, **changes)


# -- helpers ------------------------------------------------------------------------------------
def _check_keys(src: YamlSource, mapping: Mapping, allowed: Iterable[str], where: str) -> None:
    allowed = tuple(allowed)
    for key in mapping:
        if key not in allowed:
            k = join(where, key)
            raise src.error(k, f"unknown key '{key}'", did_you_mean(str(key), allowed))


def _mapping(src: YamlSource, value: Any, where: str) -> Mapping:
    if not isinstance(value, dict):
        raise src.error(where, f"expected a mapping, got {_kind(value)}")
    return value


def _kind(v: Any) -> str:
    if v is None:
        return "nothing (null)"
    return {dict: "a mapping", list: "a list", str: f"the string {v!r}", bool: f"{v}"}.get(type(v), repr(v))


#: Largest Monte Carlo sample count: the block tables hold 5 float64 per 64 samples and check.
MAX_SAMPLES = 2**31

#: Largest integer a spec may give (sample counts, seeds, sizes): 2**40.
INT_MAX = 2**40


def check_seed(seed: int) -> int:
    """A seed given as an option (``--seed``): the spec's own range, so that no two seeds collide."""
    if seed < 0 or seed > INT_MAX:
        raise EqauditError(f"must be between 0 and {INT_MAX}, got {seed}", key="--seed")
    return int(seed)


def _int(src: YamlSource, v: Any, key: str, *, minimum: int = 0, maximum: int = INT_MAX) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise src.error(key, f"expected an integer, got {_kind(v)}")
    if v < minimum:
        raise src.error(key, f"must be >= {minimum}, got {v}")
    if v > maximum:
        raise src.error(key, f"{v} is too large (at most {maximum})")
    return v


def _float(src: YamlSource, v: Any, key: str, *, minimum: float | None = 0.0) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise src.error(key, f"expected a finite number, got {_kind(v)}")
    if minimum is not None and v < minimum:
        raise src.error(key, f"must be >= {minimum}, got {v}")
    return float(v)


def _resolve_path(base_dir: Path, text: str) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else base_dir / p


# -- sections -----------------------------------------------------------------------------------
def _parse_model(src: YamlSource, raw: Any, base_dir: Path) -> ModelSpec:
    if raw is None:
        return ModelSpec()
    m = _mapping(src, raw, "model")
    _check_keys(src, m, MODEL_KEYS, "model")
    factory = m.get("factory")
    if factory is not None and (not isinstance(factory, str) or ":" not in factory):
        raise src.error(
            "model.factory", f"expected 'package.module:callable' or 'file.py:callable', got {_kind(factory)}"
        )
    kwargs = m.get("kwargs")
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, dict):
        raise src.error("model.kwargs", f"expected a mapping of keyword arguments, got {_kind(kwargs)}")
    ckpt = m.get("checkpoint")
    if ckpt is not None and not (isinstance(ckpt, str) and ckpt.strip()):
        raise src.error("model.checkpoint", f"expected a file path, got {_kind(ckpt)}",
                        "give the checkpoint's path, or remove the key to audit the factory's weights")
    return ModelSpec(factory, dict(kwargs), _resolve_path(base_dir, ckpt) if ckpt else None)


def _parse_bounds(src: YamlSource, v: Any, key: str) -> Any:
    def walk(x: Any, k: str) -> Any:
        if isinstance(x, list):
            return [walk(item, join(k, i)) for i, item in enumerate(x)]
        return _float(src, x, k, minimum=None)

    if not isinstance(v, list) or not v:
        raise src.error(key, f"expected [lo, hi] or nested lists ending in [lo, hi] pairs, got {_kind(v)}")
    bounds = walk(v, key)
    import torch

    try:
        t = torch.tensor(bounds, dtype=torch.float64)
    except (ValueError, TypeError):
        raise src.error(key, "nested lists must be rectangular") from None
    if t.shape[-1] != 2:
        raise src.error(key, f"the innermost lists must be [lo, hi] pairs, got length {t.shape[-1]}")
    if bool((t[..., 0] > t[..., 1]).any()):
        raise src.error(key, "lo > hi in a [lo, hi] pair")
    return bounds


def _parse_input(src: YamlSource, raw: Any, base_dir: Path, require: bool) -> InputSpec:
    if raw is None:
        if require:
            raise src.error("input", "missing: the spec needs an input block", "add 'input: {shape: [C, H, W]}'")
        raw = {}
    m = _mapping(src, raw, "input")
    _check_keys(src, m, INPUT_KEYS, "input")
    data = None
    if "data" in m:
        d = m["data"]
        if not isinstance(d, str) or ":" not in d:
            raise src.error("input.data", f"expected 'file.safetensors:key', got {_kind(d)}")
        fname, _, key = d.rpartition(":")
        path = _resolve_path(base_dir, fname)
        if not path.is_file():
            raise src.error("input.data", f"data file '{path}' not found", "paths resolve against the spec's folder")
        data = DataRef(path, key)
        if "bounds" in m:
            raise src.error("input.bounds", "give either 'bounds' or 'data', not both")
    shape: tuple[int, ...]
    if "shape" in m:
        s = m["shape"]
        if not isinstance(s, list) or not s:
            raise src.error("input.shape", f"expected a list of sizes such as [1, 28, 28], got {_kind(s)}")
        shape = tuple(_int(src, v, f"input.shape[{i}]", minimum=1) for i, v in enumerate(s))
        if math.prod(shape) > MAX_SAMPLE_ELEMENTS:
            raise src.error("input.shape", f"one sample of shape {list(shape)} has {math.prod(shape):,} elements, "
                            f"more than the {MAX_SAMPLE_ELEMENTS:,} allowed",
                            "give the shape of one sample, without the batch dimension")
    elif data is not None:
        shape = ()  # taken from the data file when it is loaded
    else:
        raise src.error("input.shape", "missing", "give the shape of one sample, without the batch dimension")
    bounds: Any = (0.0, 1.0)
    if "bounds" in m:
        bounds = _parse_bounds(src, m["bounds"], "input.bounds")
    dtype = m.get("dtype")
    if dtype is not None and dtype not in DTYPES:
        raise src.error("input.dtype", f"unknown dtype {_kind(dtype)}", did_you_mean(str(dtype), DTYPES))
    sampling = m.get("sampling", "random")
    if sampling not in SAMPLINGS:
        raise src.error("input.sampling", f"expected random, sequential or sobol, got {_kind(sampling)}",
                        did_you_mean(str(sampling), SAMPLINGS))
    if sampling == "sequential" and data is None:
        raise src.error("input.sampling", "'sequential' only applies to 'input.data'")
    if sampling == "sobol":
        if data is not None:
            raise src.error("input.sampling", "'sobol' (quasi-Monte Carlo) needs a uniform box, not 'input.data'",
                            "use random or sequential with data")
        if math.prod(shape) > SOBOL_MAX_DIM:
            raise src.error("input.sampling", f"'sobol' supports at most {SOBOL_MAX_DIM} input elements, "
                            f"the input has {math.prod(shape)}", "use sampling: random")
    return InputSpec(shape, bounds, data, dtype, sampling)


def _build_transform(src: YamlSource, value: Any, key: str, base_dir: Path) -> Transform:
    try:
        return transforms_zoo.build(value, base_dir=str(base_dir))
    except TransformError as exc:
        sub = key
        if exc.key:
            sub = key + exc.key if exc.key.startswith("[") else f"{key}.{exc.key}"
        raise src.error(sub, exc.message, exc.hint) from None


def _parse_check(
    src: YamlSource, raw: Any, i: int, default_distance: str | float, base_dir: Path
) -> CheckSpec:
    where = f"checks[{i}]"
    c = _mapping(src, raw, where)
    _check_keys(src, c, CHECK_KEYS, where)
    both = "both" in c
    group = None
    if both and ("input" in c or "output" in c):
        raise src.error(
            f"{where}.both", "'both' replaces 'input' and 'output'", "remove input/output, or remove both"
        )
    if "group" in c:
        from transforms_zoo.group import finite_group

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
                            f"element on the outputs), got {_kind(out)}")
        both = out == "same"
        t_in = group
        t_out = group if both else _build_transform(src, "identity", f"{where}.output", base_dir)
    elif both:
        t_in = _build_transform(src, c["both"], f"{where}.both", base_dir)
        t_out = t_in
    else:
        if "input" not in c:
            raise src.error(where, "missing 'input' (or 'both')", "e.g. input: rot90")
        t_in = _build_transform(src, c["input"], f"{where}.input", base_dir)
        t_out = _build_transform(src, c.get("output", "identity"), f"{where}.output", base_dir)
    dist_text = c.get("distance", default_distance)
    try:
        dist = parse_distance(dist_text, base_dir)
    except EqauditError as exc:
        key = f"{where}.distance" if "distance" in c else "distance"
        raise src.error(key, exc.message, exc.hint) from None
    epsilon = _float(src, c.get("epsilon", 0.0), f"{where}.epsilon")
    threshold = _float(src, c["threshold"], f"{where}.threshold") if "threshold" in c else epsilon
    weight = _float(src, c.get("weight", 1.0), f"{where}.weight")
    name = c.get("name")
    if name is None:
        name = t_in.describe() if t_out.name == "identity" or both else f"{t_in.describe()} -> {t_out.describe()}"
    elif not isinstance(name, (str, int, float)) or isinstance(name, bool):
        raise src.error(f"{where}.name", f"expected a string, got {_kind(name)}")
    elif not str(name).strip():
        raise src.error(f"{where}.name", "the name is empty", "give the check a name, or remove the key")
    elif any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in str(name)):
        raise src.error(f"{where}.name", f"the name {str(name)!r} contains control characters (newlines, tabs, "
                        "escapes), which break the table and the JUnit and Markdown reports", "use printable text")
    mode = c.get("mode", "sample")
    if mode not in MODES:
        raise src.error(f"{where}.mode", f"expected sample or lie, got {_kind(mode)}", did_you_mean(str(mode), MODES))
    if mode == "lie":
        _check_lie(src, c, where, t_in, t_out, both, group, dist)
    mask = c.get("mask", "none")
    if mask not in MASKS:
        raise src.error(f"{where}.mask", f"expected none or valid, got {_kind(mask)}", did_you_mean(str(mask), MASKS))
    if mask == "valid" and (group is not None or mode == "lie"):
        raise src.error(f"{where}.mask", "'mask: valid' applies to sampled transforms, not to 'group' or "
                        "'mode: lie' checks", "remove mask")
    return CheckSpec(str(name), t_in, t_out, both, dist, epsilon, threshold, weight, group, mode, mask)


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
    if not (dist.name in ("l1", "l2", "linf") or dist.name.startswith("lp:")):
        key = f"{where}.distance" if "distance" in c else "distance"
        raise src.error(key, f"'mode: lie' takes the norm of a derivative: use l1, l2, linf or lp:P, "
                        f"not {dist.name}")


def parse_spec(
    src: YamlSource, *, base_dir: Path | None = None, extra_keys: Iterable[str] = ()
) -> Spec:
    """Validate a parsed YAML document as a spec. ``extra_keys`` are allowed top-level keys that a
    caller (the fine-tune config) parses itself."""
    base = base_dir if base_dir is not None else (Path(src.file).parent if src.file else Path.cwd())
    if not isinstance(src.data, dict):
        raise src.error(None, f"a spec is a YAML mapping with keys {', '.join(SPEC_KEYS)}; got {_kind(src.data)}")
    d = src.data
    _check_keys(src, d, (*SPEC_KEYS, *extra_keys), "")
    model = _parse_model(src, d.get("model"), base)
    inp = _parse_input(src, d.get("input"), base, require=True)
    distance = d.get("distance", "l2")
    if not isinstance(distance, (str, int, float)) or isinstance(distance, bool):
        raise src.error("distance", f"expected a distance name, got {_kind(distance)}")
    samples = _int(src, d.get("samples", 1024), "samples", minimum=1, maximum=MAX_SAMPLES)
    seed = _int(src, d.get("seed", 0), "seed", minimum=0)
    raw_checks = d.get("checks")
    if not isinstance(raw_checks, list) or not raw_checks:
        raise src.error("checks", "expected a non-empty list of checks", "e.g. checks: [{input: rot90}]")
    checks = [_parse_check(src, c, i, distance, base) for i, c in enumerate(raw_checks)]
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
        num_funcs = _int(src, nf, "num_funcs", minimum=1)
        if num_funcs > len(checks):
            raise src.error("num_funcs", f"{num_funcs} exceeds the number of checks ({len(checks)})", "use 'all'")
        if num_funcs == len(checks):
            num_funcs = None
    layers = _parse_layers(src, d.get("layers"))
    return Spec(model, inp, tuple(checks), str(distance), samples, num_funcs, seed, layers=layers, file=src.file,
                base_dir=base, lines=src.lines, code_refs=_code_references(raw_checks, distance))


def _code_references(raw_checks: list, distance: Any) -> dict[str, str]:
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
    """Whether a spec value names user code (``lp:P`` is a distance, not code)."""
    return is_reference(value) and not (as_distance and value.startswith("lp:"))


def _parse_layers(src: YamlSource, raw: Any) -> tuple[str, ...] | str | None:
    if raw is None:
        return None
    if raw == "all":
        return "all"
    if not isinstance(raw, list) or not raw:
        raise src.error("layers", f"expected 'all' or a list of module names, got {_kind(raw)}",
                        "e.g. layers: [features.0, features.2]")
    names = []
    for i, n in enumerate(raw):
        if isinstance(n, int) and not isinstance(n, bool) and n >= 0:
            n = str(n)  # nn.Sequential children are named "0", "1", ...: YAML reads them as integers
        if not isinstance(n, str) or not n:
            raise src.error(f"layers[{i}]", f"expected a module name, got {_kind(n)}",
                            "names as in model.named_modules(), e.g. features.0")
        names.append(n)
    return tuple(names)


def load_spec(path: str | Path, *, extra_keys: Iterable[str] = ()) -> Spec:
    """Read and validate a spec file."""
    src = load_yaml(path)
    return parse_spec(src, base_dir=Path(path).resolve().parent, extra_keys=extra_keys)


def spec_from_dict(data: Mapping[str, Any], base_dir: str | Path | None = None) -> Spec:
    """Validate a spec given as a Python mapping (the same schema as the YAML)."""
    src = YamlSource(dict(data), "<spec>")
    return parse_spec(src, base_dir=Path(base_dir) if base_dir else Path.cwd())
