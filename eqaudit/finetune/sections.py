"""The sections of a fine-tune config (``data``, ``optimizer``, ``regularizer``, ``output``,
``dynamics``): each one's validated dataclass and the parser that builds it from YAML, every error
located at its key and line."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import did_you_mean
from ..io.yaml_source import YamlSource
from ..spec import (Spec, check_keys, describe_value, expect_mapping, parse_bool, parse_choice, parse_float, parse_int,
                    resolve_path)
from .layer_penalty import LayerTerm, parse_layer_terms

DATA_KEYS = ("path", "inputs", "targets", "val_path", "val_inputs", "val_targets", "dataset", "val_dataset", "kwargs")
OPTIMIZER_KEYS = ("name", "lr", "weight_decay", "betas", "momentum", "nesterov")
OPTIMIZERS = ("adam", "adamw", "sgd")
POINTS = ("data", "random", "both")
REGULARIZER_KEYS = ("points", "samples", "num_funcs", "every", "layers")
OUTPUT_KEYS = ("checkpoint", "report", "state")
DYNAMICS_KEYS = ("enabled", "directions", "displacements", "iterations", "examples", "every", "samples", "sharpness")


@dataclass(frozen=True)
class DataConfig:
    """Where the training (and validation) examples come from: a safetensors file or a dataset callable."""

    path: Path | None = None
    inputs: str = "inputs"
    targets: str = "targets"
    val_path: Path | None = None
    val_inputs: str | None = None
    val_targets: str | None = None
    dataset: str | None = None
    val_dataset: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimizerConfig:
    """The optimizer and its hyperparameters."""

    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.0
    nesterov: bool = False


@dataclass(frozen=True)
class RegularizerConfig:
    """Where and how often the penalty is taken."""

    points: str = "data"
    samples: int | None = None  # None: batch_size
    num_funcs: int | None = None  # None: all penalized checks
    every: int = 1
    layers: tuple[LayerTerm, ...] = ()  # the layer-wise penalty (empty: none)


@dataclass(frozen=True)
class OutputConfig:
    """The files a fine-tune writes."""

    checkpoint: Path
    report: Path
    state: Path


@dataclass(frozen=True)
class DynamicsConfig:
    """The training-dynamics figures of the final point."""

    enabled: bool = False
    directions: int = 10
    displacements: tuple[float, ...] = (0.05, 0.1)
    iterations: int = 50
    examples: int = 512
    every: int = 0  # the series: every N-th step (0: none)
    samples: int = 64  # audit points of each point of the series
    sharpness: bool = False  # the series also tracks the sharpness


def text_value(src: YamlSource, value: Any, key: str) -> str:
    """A non-empty string at ``key``."""
    if not isinstance(value, str) or not value:
        raise src.error(key, f"expected a string, got {describe_value(value)}")
    return value


def parse_data(src: YamlSource, raw: Any, base: Path) -> DataConfig:
    """The ``data`` section (or its shorthand: a file path or a ``module:callable``)."""
    if raw is None:
        raise src.error("data", "missing: a fine-tune needs training data",
                        "add 'data: {path: train.safetensors, inputs: x, targets: y}'")
    shorthand = isinstance(raw, str)
    if shorthand:
        raw = {"dataset": raw} if ":" in raw and not raw.endswith(".safetensors") else {"path": raw}
    section = expect_mapping(src, raw, "data")
    check_keys(src, section, DATA_KEYS, "data")
    if ("path" in section) == ("dataset" in section):
        raise src.error("data", "give either 'path' (a safetensors file) or 'dataset' ('module:callable')",
                        None if "path" in section else "e.g. data: {path: train.safetensors, inputs: x, targets: y}")

    def key_path(key: str) -> str:
        return "data" if shorthand else f"data.{key}"

    def file_key(key: str) -> Path | None:
        if key not in section:
            return None
        path = resolve_path(base, text_value(src, section[key], key_path(key)))
        if not path.is_file():
            raise src.error(key_path(key), f"data file '{path}' not found", "paths resolve against the config's folder")
        return path

    def reference_key(key: str) -> str | None:
        if key not in section:
            return None
        text = text_value(src, section[key], key_path(key))
        if ":" not in text:
            raise src.error(f"data.{key}", f"expected 'package.module:callable' or 'file.py:callable', got {text!r}")
        return text

    path, val_path = file_key("path"), file_key("val_path")
    dataset, val_dataset = reference_key("dataset"), reference_key("val_dataset")
    _check_data_combination(src, section, dataset, val_dataset, val_path)
    kwargs = section.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise src.error("data.kwargs", f"expected a mapping of keyword arguments, got {describe_value(kwargs)}")
    names = {k: text_value(src, section.get(k, k), f"data.{k}") for k in ("inputs", "targets")}
    names.update({k: text_value(src, section[k], f"data.{k}") if k in section else None
                  for k in ("val_inputs", "val_targets")})
    return DataConfig(
        path=path,
        inputs=names["inputs"],
        targets=names["targets"],
        val_path=val_path,
        val_inputs=names["val_inputs"],
        val_targets=names["val_targets"],
        dataset=dataset,
        val_dataset=val_dataset,
        kwargs=dict(kwargs),
    )


def _check_data_combination(src: YamlSource, section: Mapping, dataset: str | None, val_dataset: str | None,
                            val_path: Path | None) -> None:
    """Keys of ``data`` that do not go together."""
    if dataset is not None:
        for key in ("inputs", "targets", "val_path", "val_inputs", "val_targets"):
            if key in section:
                raise src.error(f"data.{key}", f"'{key}' applies to 'data.path', not to 'data.dataset'")
    elif val_dataset is not None:
        raise src.error("data.val_dataset", "'val_dataset' goes with 'dataset'", "use val_inputs/val_targets with path")
    if ("val_inputs" in section) != ("val_targets" in section):
        missing = "val_targets" if "val_inputs" in section else "val_inputs"
        raise src.error(f"data.{missing}", "missing: validation data needs both val_inputs and val_targets")
    if val_path is not None and "val_inputs" not in section:
        raise src.error("data.val_path", "give val_inputs and val_targets too")


def parse_optimizer(src: YamlSource, raw: Any) -> OptimizerConfig:
    """The ``optimizer`` section (or just its name)."""
    if raw is None:
        return OptimizerConfig()
    name_only = isinstance(raw, str)
    section = expect_mapping(src, {"name": raw} if name_only else raw, "optimizer")
    check_keys(src, section, OPTIMIZER_KEYS, "optimizer")
    name = section.get("name", "adam")
    if name not in OPTIMIZERS:
        raise src.error("optimizer" if name_only else "optimizer.name", f"unknown optimizer {describe_value(name)}",
                        did_you_mean(str(name), OPTIMIZERS))
    lr = parse_float(src, section.get("lr", 1e-2 if name == "sgd" else 1e-3), "optimizer.lr")
    if lr <= 0:
        raise src.error("optimizer.lr", f"must be > 0, got {lr}")
    weight_decay = parse_float(src, section.get("weight_decay", 0.01 if name == "adamw" else 0.0),
                               "optimizer.weight_decay")
    betas = (0.9, 0.999)
    if "betas" in section:
        if name == "sgd":
            raise src.error("optimizer.betas", "applies to adam and adamw, not sgd", "use momentum")
        given = section["betas"]
        if not isinstance(given, list) or len(given) != 2:
            raise src.error("optimizer.betas", f"expected [beta1, beta2], got {describe_value(given)}")
        betas = tuple(parse_float(src, b, f"optimizer.betas[{i}]")  # type: ignore[assignment]
                      for i, b in enumerate(given))
        if not all(0 <= b < 1 for b in betas):
            raise src.error("optimizer.betas", "each beta must lie in [0, 1)")
    for key in ("momentum", "nesterov"):
        if key in section and name != "sgd":
            raise src.error(f"optimizer.{key}", f"applies to sgd, not {name}")
    momentum = parse_float(src, section.get("momentum", 0.0), "optimizer.momentum")
    nesterov = parse_bool(src, section.get("nesterov", False), "optimizer.nesterov")
    if nesterov and momentum <= 0:
        raise src.error("optimizer.nesterov", "nesterov needs momentum > 0")
    return OptimizerConfig(str(name), lr, weight_decay, betas, momentum, nesterov)


def parse_regularizer(src: YamlSource, raw: Any, penalized_checks: int, spec: Spec | None = None) -> RegularizerConfig:
    """The ``regularizer`` section; ``num_funcs`` may not exceed the number of penalized checks;
    ``layers`` (the layer-wise penalty) needs the ``spec``."""
    if raw is None:
        return RegularizerConfig()
    section = expect_mapping(src, raw, "regularizer")
    check_keys(src, section, REGULARIZER_KEYS, "regularizer")
    points = parse_choice(src, section.get("points", "data"), "regularizer.points", POINTS)
    samples = parse_int(src, section["samples"], "regularizer.samples", minimum=1) if "samples" in section else None
    if samples is not None and points == "data":
        raise src.error("regularizer.samples", "applies to points: random or both",
                        "with points: data the training batch is the sample")
    given = section.get("num_funcs", "all")
    num_funcs = None
    if given != "all":
        num_funcs = parse_int(src, given, "regularizer.num_funcs", minimum=1)
        if num_funcs > penalized_checks:
            raise src.error("regularizer.num_funcs", f"{num_funcs} exceeds the number of checks ({penalized_checks})",
                            "use 'all'")
    every = parse_int(src, section.get("every", 1), "regularizer.every", minimum=1)
    layers = parse_layer_terms(src, section["layers"], spec) if "layers" in section and spec is not None else ()
    return RegularizerConfig(str(points), samples, num_funcs, every, layers)


def parse_output(src: YamlSource, raw: Any, base: Path, spec: Spec) -> OutputConfig:
    """The ``output`` section (or just the checkpoint path); report and state default beside it."""
    if raw is None:
        raise src.error("output", "missing: where to write the fine-tuned model",
                        "add 'output: {checkpoint: finetuned.safetensors}'")
    section = expect_mapping(src, {"checkpoint": raw} if isinstance(raw, str) else raw, "output")
    check_keys(src, section, OUTPUT_KEYS, "output")
    if "checkpoint" not in section:
        raise src.error("output.checkpoint", "missing", "e.g. checkpoint: finetuned.safetensors")
    checkpoint = resolve_path(base, text_value(src, section["checkpoint"], "output.checkpoint"))
    if checkpoint.suffix != ".safetensors":
        raise src.error("output.checkpoint", f"the fine-tuned model is written as safetensors; got '{checkpoint.name}'",
                        f"name it {checkpoint.stem}.safetensors")
    if spec.model.checkpoint is not None and _same_file(checkpoint, spec.model.checkpoint):
        raise src.error("output.checkpoint", "is the checkpoint being fine-tuned (model.checkpoint)",
                        "write the fine-tuned model to a new file")
    stem = checkpoint.with_suffix("")

    def path_of(key: str, default: str) -> Path:
        if key not in section:
            return Path(default)
        return resolve_path(base, text_value(src, section[key], f"output.{key}"))

    paths = {"checkpoint": checkpoint, "report": path_of("report", f"{stem}.report.json"),
             "state": path_of("state", f"{stem}.state.pt")}
    seen: dict[str, str] = {}
    for key, path in paths.items():
        real = os.path.realpath(path)  # a link loop stays a path (Path.resolve raises)
        if real in seen:
            raise src.error(f"output.{key}", f"is the same file as output.{seen[real]}")
        seen[real] = key
    return OutputConfig(**paths)


def _same_file(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def parse_dynamics(src: YamlSource, raw: Any) -> DynamicsConfig:
    """The ``dynamics`` section (or ``true``/``false``)."""
    if raw is None:
        return DynamicsConfig()
    if isinstance(raw, bool):
        return DynamicsConfig(enabled=raw)
    section = expect_mapping(src, raw, "dynamics")
    check_keys(src, section, DYNAMICS_KEYS, "dynamics")
    enabled = parse_bool(src, section.get("enabled", True), "dynamics.enabled")
    track_sharpness = parse_bool(src, section.get("sharpness", False), "dynamics.sharpness")
    displacements = section.get("displacements", [0.05, 0.1])
    if isinstance(displacements, (int, float)) and not isinstance(displacements, bool):
        displacements = [displacements]
    if not isinstance(displacements, list) or not displacements:
        raise src.error("dynamics.displacements", f"expected a list of numbers, got {describe_value(displacements)}")
    values = tuple(parse_float(src, t, f"dynamics.displacements[{i}]", minimum=None) for i, t in enumerate(displacements))
    if any(t == 0 for t in values):
        raise src.error("dynamics.displacements", "a displacement of 0 measures nothing")
    return DynamicsConfig(
        enabled=enabled,
        directions=parse_int(src, section.get("directions", 10), "dynamics.directions", minimum=1),
        displacements=values,
        iterations=parse_int(src, section.get("iterations", 50), "dynamics.iterations", minimum=1),
        examples=parse_int(src, section.get("examples", 512), "dynamics.examples", minimum=1),
        every=parse_int(src, section.get("every", 0), "dynamics.every", minimum=0),
        samples=parse_int(src, section.get("samples", 64), "dynamics.samples", minimum=1),
        sharpness=track_sharpness,
    )
