"""Parsers of the spec's ``model``, ``input`` and ``layers`` sections."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..errors import did_you_mean
from ..io.yaml_source import YamlSource, join
from .fields import (check_keys, describe_value, expect_mapping, parse_bool, parse_choice, parse_float, parse_int,
                     resolve_path)
from .model import DataRef, InputSpec, ModelSpec

MODEL_KEYS = ("factory", "kwargs", "checkpoint")
INPUT_KEYS = ("shape", "bounds", "data", "dataset", "resize", "dtype", "sampling")
#: At most this many elements in one sample (2^31: ~8 GiB of float32 for a single point).
MAX_SAMPLE_ELEMENTS = 1 << 31
DTYPES = ("float16", "bfloat16", "float32", "float64")
SAMPLINGS = ("random", "sequential", "sobol")
SOBOL_MAX_DIM = 21201  # torch.quasirandom.SobolEngine.MAXDIM


def parse_model(src: YamlSource, raw: Any, base_dir: Path) -> ModelSpec:
    if raw is None:
        return ModelSpec()
    m = expect_mapping(src, raw, "model")
    check_keys(src, m, MODEL_KEYS, "model")
    factory = m.get("factory")
    if factory is not None and (not isinstance(factory, str) or ":" not in factory):
        raise src.error(
            "model.factory", f"expected 'package.module:callable' or 'file.py:callable', got {describe_value(factory)}"
        )
    kwargs = m.get("kwargs")
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, dict):
        raise src.error("model.kwargs", f"expected a mapping of keyword arguments, got {describe_value(kwargs)}")
    ckpt = m.get("checkpoint")
    if ckpt is not None and not (isinstance(ckpt, str) and ckpt.strip()):
        raise src.error("model.checkpoint", f"expected a file path, got {describe_value(ckpt)}",
                        "give the checkpoint's path, or remove the key to audit the factory's weights")
    return ModelSpec(factory, dict(kwargs), resolve_path(base_dir, ckpt) if ckpt else None)


def _parse_bounds(src: YamlSource, v: Any, key: str) -> Any:
    def walk(x: Any, k: str) -> Any:
        if isinstance(x, list):
            return [walk(item, join(k, i)) for i, item in enumerate(x)]
        return parse_float(src, x, k, minimum=None)

    if not isinstance(v, list) or not v:
        raise src.error(key, f"expected [lo, hi] or nested lists ending in [lo, hi] pairs, got {describe_value(v)}")
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


def parse_input(src: YamlSource, raw: Any, base_dir: Path, require: bool) -> InputSpec:
    if raw is None:
        if require:
            raise src.error("input", "missing: the spec needs an input block", "add 'input: {shape: [C, H, W]}'")
        raw = {}
    m = expect_mapping(src, raw, "input")
    check_keys(src, m, INPUT_KEYS, "input")
    data = _parse_data(src, m, base_dir)
    dataset = _parse_dataset(src, m, data)
    shape: tuple[int, ...]
    if "shape" in m:
        s = m["shape"]
        if not isinstance(s, list) or not s:
            raise src.error("input.shape", f"expected a list of sizes such as [1, 28, 28], got {describe_value(s)}")
        shape = tuple(parse_int(src, v, f"input.shape[{i}]", minimum=1) for i, v in enumerate(s))
        if math.prod(shape) > MAX_SAMPLE_ELEMENTS:
            raise src.error("input.shape", f"one sample of shape {list(shape)} has {math.prod(shape):,} elements, "
                            f"more than the {MAX_SAMPLE_ELEMENTS:,} allowed",
                            "give the shape of one sample, without the batch dimension")
    elif data is not None and data.path.is_dir():
        raise src.error("input.shape", "missing: a folder of images needs the shape [C, H, W] to read them as",
                        "e.g. shape: [3, 64, 64] (C = 1: grayscale, 3: RGB)")
    elif data is not None or dataset is not None:
        shape = ()  # taken from the data when it is loaded
    else:
        raise src.error("input.shape", "missing", "give the shape of one sample, without the batch dimension")
    bounds: Any = (0.0, 1.0)
    if "bounds" in m:
        bounds = _parse_bounds(src, m["bounds"], "input.bounds")
    dtype = m.get("dtype")
    if dtype is not None and dtype not in DTYPES:
        raise src.error("input.dtype", f"unknown dtype {describe_value(dtype)}", did_you_mean(str(dtype), DTYPES))
    sampling = parse_choice(src, m.get("sampling", "random"), "input.sampling", SAMPLINGS)
    if sampling == "sequential" and data is None and dataset is None:
        raise src.error("input.sampling", "'sequential' only applies to 'input.data' or 'input.dataset'")
    if sampling == "sobol":
        if data is not None or dataset is not None:
            raise src.error("input.sampling", "'sobol' (quasi-Monte Carlo) needs a uniform box, not 'input.data'",
                            "use random or sequential with data")
        if math.prod(shape) > SOBOL_MAX_DIM:
            raise src.error("input.sampling", f"'sobol' supports at most {SOBOL_MAX_DIM} input elements, "
                            f"the input has {math.prod(shape)}", "use sampling: random")
    resize = parse_bool(src, m.get("resize", False), "input.resize")
    if resize and (data is None or not data.path.is_dir()):
        raise src.error("input.resize", "'resize' only applies to a folder of images in 'input.data'")
    return InputSpec(shape, bounds, data, dtype, sampling, dataset, resize)


def _parse_data(src: YamlSource, m: dict, base_dir: Path) -> DataRef | None:
    """``input.data``: ``file.safetensors:key``, ``file.npz:key``, ``file.pt[:key]``, ``file.npy``
    or a folder of images. The whole text is tried as a path first, then split at its last ``:``."""
    if "data" not in m:
        return None
    d = m["data"]
    expected = "'file.safetensors:key', 'file.npz:key', 'file.pt[:key]', 'file.npy' or a folder of images"
    if not isinstance(d, str) or not d.strip():
        raise src.error("input.data", f"expected {expected}, got {describe_value(d)}")
    if "bounds" in m:
        raise src.error("input.bounds", "give either 'bounds' or 'data', not both")
    whole = resolve_path(base_dir, d)
    if whole.is_dir() or (whole.exists() and whole.suffix.lower() in (".npy", ".pt", ".pth")):
        return DataRef(whole, None)
    if ":" not in d:
        if whole.exists():
            raise src.error("input.data", f"'{d}' needs the name of a tensor in the file", f"write '{d}:key'")
        raise src.error("input.data", f"data file '{whole}' not found", "paths resolve against the spec's folder")
    fname, _, key = d.rpartition(":")
    path = resolve_path(base_dir, fname)
    if not path.exists():
        raise src.error("input.data", f"data file '{path}' not found", "paths resolve against the spec's folder")
    if path.is_dir() or path.suffix.lower() == ".npy":
        raise src.error("input.data", f"'{fname}' holds one set of samples, it takes no ':{key}'",
                        f"write '{fname}' alone")
    if not key:
        raise src.error("input.data", f"expected {expected}, got {describe_value(d)}", f"write '{fname}:key'")
    return DataRef(path, key)


def _parse_dataset(src: YamlSource, m: dict, data: DataRef | None) -> str | None:
    """``input.dataset``: ``module:callable`` or ``file.py:callable`` returning a torch Dataset."""
    ref = m.get("dataset")
    if ref is None:
        return None
    if not isinstance(ref, str) or ":" not in ref:
        raise src.error("input.dataset", f"expected 'package.module:callable' or 'file.py:callable', "
                        f"got {describe_value(ref)}")
    if data is not None:
        raise src.error("input.dataset", "give either 'data' or 'dataset', not both")
    if "bounds" in m:
        raise src.error("input.bounds", "give either 'bounds' or 'dataset', not both")
    return ref


LAYERS_KEYS = ("names", "per_channel")


def parse_layer_options(src: YamlSource, raw: Any) -> tuple[tuple[str, ...] | str | None, bool]:
    """``layers``: ``all``, a list of module names, or ``{names: all | [...], per_channel: bool}``
    (names default to ``all``); returns the names and whether per-channel errors are asked for."""
    if not isinstance(raw, dict):
        return parse_layers(src, raw), False
    check_keys(src, raw, LAYERS_KEYS, "layers")
    per_channel = parse_bool(src, raw.get("per_channel", False), "layers.per_channel")
    names = raw.get("names", "all")
    if names is None:
        raise src.error("layers.names", "expected 'all' or a list of module names, got null",
                        "e.g. layers: {names: all, per_channel: true}")
    return parse_layers(src, names, "layers.names"), per_channel


def parse_layers(src: YamlSource, raw: Any, key: str = "layers") -> tuple[str, ...] | str | None:
    if raw is None:
        return None
    if raw == "all":
        return "all"
    if not isinstance(raw, list) or not raw:
        raise src.error(key, f"expected 'all', a list of module names or {{names, per_channel}}, "
                        f"got {describe_value(raw)}", "e.g. layers: [features.0, features.2]")
    names = []
    for i, n in enumerate(raw):
        if isinstance(n, int) and not isinstance(n, bool) and n >= 0:
            n = str(n)  # nn.Sequential children are named "0", "1", ...: YAML reads them as integers
        if not isinstance(n, str) or not n:
            raise src.error(f"{key}[{i}]", f"expected a module name, got {describe_value(n)}",
                            "names as in model.named_modules(), e.g. features.0")
        names.append(n)
    return tuple(names)
