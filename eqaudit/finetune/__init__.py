"""Regularized fine-tuning: the task loss plus the equivariance penalty of a spec's checks.

A fine-tune config is a spec (``model``, ``input``, ``distance``, ``samples``, ``num_funcs``,
``seed``, ``checks``; see SPEC.md) plus these top-level keys. Relative paths resolve against the
config's folder; unknown keys are errors.

.. code-block:: yaml

    data:                        # training (and optional validation) data
      path: digits.safetensors   #   a safetensors file ...
      inputs: train_images       #   ... its input tensor (default "inputs"), shape (N, *input.shape)
      targets: train_labels      #   ... its target tensor (default "targets"), N rows
      val_inputs: val_images     #   optional validation tensors (same file, or val_path)
      val_targets: val_labels
      # val_path: other.safetensors
      # dataset: "module:callable"      # instead of path: returns a torch Dataset of (x, y) pairs
      # val_dataset: "module:callable"  #   (or an (inputs, targets) tuple of tensors)
      # kwargs: {}                      # passed to both callables
    # data: train.safetensors    # shorthand: tensors "inputs" and "targets", no validation data
    task_loss: cross_entropy     # cross_entropy (class indices or probabilities), mse, or
                                 # "module:callable" f(outputs, targets) -> scalar tensor
    optimizer:                   # or just the name: "optimizer: adam"
      name: adam                 # adam | adamw | sgd
      lr: 0.001                  # default 1e-3 (adam, adamw), 1e-2 (sgd)
      weight_decay: 0.0          # default 0 (adamw: 0.01)
      # betas: [0.9, 0.999]      # adam, adamw
      # momentum: 0.9            # sgd (default 0); nesterov: true|false
    steps: 600                   # optimizer steps; or
    # epochs: 5                  #   passes over the training data (exactly one of the two)
    batch_size: 64               # default 64; the last incomplete batch of an epoch is dropped
    device: auto                 # auto | cpu | cuda | cuda:K (--device overrides)
    threads: 1                   # CPU threads for the run (torch.set_num_threads); default: torch's.
                                 #   One thread is fastest for small models on a busy machine.
    regularizer:
      points: data               # data: the training batch is the Monte Carlo sample and its
                                 #   outputs (already computed for the task loss) are reused;
                                 # random: `samples` fresh points from `input` per step;
                                 # both: the batch and the random points together
      samples: 64                # random points per step (default: batch_size)
      num_funcs: all             # checks evaluated per penalty step: all, or k drawn without
                                 #   replacement each step
      every: 1                   # penalty on every N-th step only (1 = every step)
    output:
      checkpoint: finetuned.safetensors   # the fine-tuned state dict (required)
      report: finetuned.report.json       # default: <checkpoint stem>.report.json
      state: finetuned.state.pt           # resumable state; default: <checkpoint stem>.state.pt
    checkpoint_every: 100        # write the resumable state every N steps (0: only at the end)
    log_every: 10                # one learning-curve point per N steps (averages over them)
    dynamics:                    # training-dynamics figures of the final point (also --dynamics)
      enabled: true              # default true when the block is given; `dynamics: true` works too
      directions: 10             # random unit directions for the sharpness phi
      displacements: [0.05, 0.1] # the displacements t
      iterations: 50             # power-iteration steps for the top Hessian eigenvalue
      examples: 512              # training rows (the first N) on which the task loss is taken

The penalty of one step is ``sum over the chosen checks of weight * max(0, error - epsilon)``,
with ``error`` the mean distance over the step's points, computed in the model's dtype and
differentiable. Checks with ``weight: 0`` are audited but not penalized. The top-level ``samples``
and ``num_funcs`` keep their audit meaning (the before/after audits); ``regularizer.samples`` and
``regularizer.num_funcs`` are the per-step penalty's. The model is in training mode for every
training pass (dropout and batch norm behave as in training) and in eval mode for the audits,
the validation metrics and the dynamics.

Determinism: the data order of epoch ``e`` comes from a generator seeded by ``(seed, e)``, every
random draw of the penalty at step ``s`` is keyed by ``(seed, s, row)`` (:class:`SampleRNG`), and
torch's global generator (dropout) is seeded with ``seed`` and saved in the state; so a resumed
run ends with the same weights as an uninterrupted one (bitwise on CPU).

Nothing here prints: :func:`run_finetune` reports progress through a callback.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io.atomic import atomic_write, temp_prefix
from ..errors import EqauditError, did_you_mean
from ..spec import Spec, _check_keys, check_seed, _float, _int, _kind, _mapping, _resolve_path, parse_spec
from ..io.yaml_source import YamlSource, load_yaml

FINETUNE_KEYS = (
    "data",
    "task_loss",
    "optimizer",
    "steps",
    "epochs",
    "batch_size",
    "device",
    "threads",
    "regularizer",
    "output",
    "checkpoint_every",
    "log_every",
    "dynamics",
)
DATA_KEYS = ("path", "inputs", "targets", "val_path", "val_inputs", "val_targets", "dataset", "val_dataset", "kwargs")
OPTIMIZER_KEYS = ("name", "lr", "weight_decay", "betas", "momentum", "nesterov")
OPTIMIZERS = ("adam", "adamw", "sgd")
TASK_LOSSES = ("cross_entropy", "mse")
POINTS = ("data", "random", "both")
REGULARIZER_KEYS = ("points", "samples", "num_funcs", "every")
OUTPUT_KEYS = ("checkpoint", "report", "state")
DYNAMICS_KEYS = ("enabled", "directions", "displacements", "iterations", "examples")

STATE_FORMAT = "eqaudit.finetune.state"
STATE_VERSION = 1

#: keys that may change between a run and its resumption (they do not change step s's update)
_RESUMABLE_CHANGES = ("steps", "epochs", "output", "checkpoint_every", "log_every", "dynamics", "device")

Callback = Callable[[str, Mapping[str, Any]], None]


# -- the config ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataConfig:
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
    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.0
    nesterov: bool = False


@dataclass(frozen=True)
class RegularizerConfig:
    points: str = "data"
    samples: int | None = None  # None: batch_size
    num_funcs: int | None = None  # None: all penalized checks
    every: int = 1


@dataclass(frozen=True)
class OutputConfig:
    checkpoint: Path
    report: Path
    state: Path


@dataclass(frozen=True)
class DynamicsConfig:
    enabled: bool = False
    directions: int = 10
    displacements: tuple[float, ...] = (0.05, 0.1)
    iterations: int = 50
    examples: int = 512


@dataclass(frozen=True)
class FinetuneConfig:
    """A validated fine-tune config: the spec plus the training keys."""

    spec: Spec
    data: DataConfig
    output: OutputConfig
    task_loss: str = "cross_entropy"
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    steps: int | None = None
    epochs: int | None = None
    batch_size: int = 64
    device: str = "auto"
    threads: int | None = None
    regularizer: RegularizerConfig = field(default_factory=RegularizerConfig)
    checkpoint_every: int = 100
    log_every: int = 10
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    fingerprint: str = ""

    @property
    def file(self) -> str | None:
        return self.spec.file

    @property
    def base_dir(self) -> Path:
        return self.spec.base_dir

    def error(self, key: str | None, message: str, hint: str | None = None) -> EqauditError:
        return self.spec.error(key, message, hint)

    def replace(self, **changes: Any) -> FinetuneConfig:
        return dataclasses.replace(self, **changes)


def _str(src: YamlSource, v: Any, key: str) -> str:
    if not isinstance(v, str) or not v:
        raise src.error(key, f"expected a string, got {_kind(v)}")
    return v


def _parse_data(src: YamlSource, raw: Any, base: Path) -> DataConfig:
    if raw is None:
        raise src.error("data", "missing: a fine-tune needs training data",
                        "add 'data: {path: train.safetensors, inputs: x, targets: y}'")
    if isinstance(raw, str):
        raw = {"dataset": raw} if ":" in raw and not raw.endswith(".safetensors") else {"path": raw}
        where_str = True
    else:
        where_str = False
    m = _mapping(src, raw, "data")
    _check_keys(src, m, DATA_KEYS, "data")
    if ("path" in m) == ("dataset" in m):
        raise src.error("data", "give either 'path' (a safetensors file) or 'dataset' ('module:callable')",
                        None if "path" in m else "e.g. data: {path: train.safetensors, inputs: x, targets: y}")

    def file_key(key: str) -> Path | None:
        if key not in m:
            return None
        text = _str(src, m[key], "data" if where_str else f"data.{key}")
        p = _resolve_path(base, text)
        if not p.is_file():
            raise src.error("data" if where_str else f"data.{key}", f"data file '{p}' not found",
                            "paths resolve against the config's folder")
        return p

    def ref_key(key: str) -> str | None:
        if key not in m:
            return None
        text = _str(src, m[key], "data" if where_str else f"data.{key}")
        if ":" not in text:
            raise src.error(f"data.{key}", f"expected 'package.module:callable' or 'file.py:callable', got {text!r}")
        return text

    path, val_path = file_key("path"), file_key("val_path")
    dataset, val_dataset = ref_key("dataset"), ref_key("val_dataset")
    if dataset is not None:
        for k in ("inputs", "targets", "val_path", "val_inputs", "val_targets"):
            if k in m:
                raise src.error(f"data.{k}", f"'{k}' applies to 'data.path', not to 'data.dataset'")
    elif val_dataset is not None:
        raise src.error("data.val_dataset", "'val_dataset' goes with 'dataset'", "use val_inputs/val_targets with path")
    if ("val_inputs" in m) != ("val_targets" in m):
        missing = "val_targets" if "val_inputs" in m else "val_inputs"
        raise src.error(f"data.{missing}", "missing: validation data needs both val_inputs and val_targets")
    if val_path is not None and "val_inputs" not in m:
        raise src.error("data.val_path", "give val_inputs and val_targets too")
    kwargs = m.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise src.error("data.kwargs", f"expected a mapping of keyword arguments, got {_kind(kwargs)}")
    return DataConfig(
        path=path,
        inputs=_str(src, m.get("inputs", "inputs"), "data.inputs"),
        targets=_str(src, m.get("targets", "targets"), "data.targets"),
        val_path=val_path,
        val_inputs=_str(src, m["val_inputs"], "data.val_inputs") if "val_inputs" in m else None,
        val_targets=_str(src, m["val_targets"], "data.val_targets") if "val_targets" in m else None,
        dataset=dataset,
        val_dataset=val_dataset,
        kwargs=dict(kwargs),
    )


def _parse_optimizer(src: YamlSource, raw: Any) -> OptimizerConfig:
    if raw is None:
        return OptimizerConfig()
    if isinstance(raw, str):
        raw = {"name": raw}
        key_of = lambda k: "optimizer"  # noqa: E731
    else:
        key_of = lambda k: f"optimizer.{k}"  # noqa: E731
    m = _mapping(src, raw, "optimizer")
    _check_keys(src, m, OPTIMIZER_KEYS, "optimizer")
    name = m.get("name", "adam")
    if name not in OPTIMIZERS:
        raise src.error(key_of("name"), f"unknown optimizer {_kind(name)}", did_you_mean(str(name), OPTIMIZERS))
    lr = _float(src, m.get("lr", 1e-2 if name == "sgd" else 1e-3), "optimizer.lr")
    if lr <= 0:
        raise src.error("optimizer.lr", f"must be > 0, got {lr}")
    wd = _float(src, m.get("weight_decay", 0.01 if name == "adamw" else 0.0), "optimizer.weight_decay")
    betas = (0.9, 0.999)
    if "betas" in m:
        if name == "sgd":
            raise src.error("optimizer.betas", "applies to adam and adamw, not sgd", "use momentum")
        b = m["betas"]
        if not isinstance(b, list) or len(b) != 2:
            raise src.error("optimizer.betas", f"expected [beta1, beta2], got {_kind(b)}")
        betas = tuple(_float(src, x, f"optimizer.betas[{i}]") for i, x in enumerate(b))  # type: ignore[assignment]
        if not all(0 <= x < 1 for x in betas):
            raise src.error("optimizer.betas", "each beta must lie in [0, 1)")
    for k in ("momentum", "nesterov"):
        if k in m and name != "sgd":
            raise src.error(f"optimizer.{k}", f"applies to sgd, not {name}")
    momentum = _float(src, m.get("momentum", 0.0), "optimizer.momentum")
    nesterov = m.get("nesterov", False)
    if not isinstance(nesterov, bool):
        raise src.error("optimizer.nesterov", f"expected true or false, got {_kind(nesterov)}")
    if nesterov and momentum <= 0:
        raise src.error("optimizer.nesterov", "nesterov needs momentum > 0")
    return OptimizerConfig(str(name), lr, wd, betas, momentum, nesterov)


def _parse_regularizer(src: YamlSource, raw: Any, n_checks: int) -> RegularizerConfig:
    if raw is None:
        return RegularizerConfig()
    m = _mapping(src, raw, "regularizer")
    _check_keys(src, m, REGULARIZER_KEYS, "regularizer")
    points = m.get("points", "data")
    if points not in POINTS:
        raise src.error("regularizer.points", f"expected data, random or both, got {_kind(points)}",
                        did_you_mean(str(points), POINTS))
    samples = _int(src, m["samples"], "regularizer.samples", minimum=1) if "samples" in m else None
    if samples is not None and points == "data":
        raise src.error("regularizer.samples", "applies to points: random or both",
                        "with points: data the training batch is the sample")
    nf = m.get("num_funcs", "all")
    num_funcs = None
    if nf != "all":
        num_funcs = _int(src, nf, "regularizer.num_funcs", minimum=1)
        if num_funcs > n_checks:
            raise src.error("regularizer.num_funcs", f"{num_funcs} exceeds the number of checks ({n_checks})",
                            "use 'all'")
    every = _int(src, m.get("every", 1), "regularizer.every", minimum=1)
    return RegularizerConfig(str(points), samples, num_funcs, every)


def _parse_output(src: YamlSource, raw: Any, base: Path, spec: Spec) -> OutputConfig:
    if raw is None:
        raise src.error("output", "missing: where to write the fine-tuned model",
                        "add 'output: {checkpoint: finetuned.safetensors}'")
    if isinstance(raw, str):
        raw = {"checkpoint": raw}
    m = _mapping(src, raw, "output")
    _check_keys(src, m, OUTPUT_KEYS, "output")
    if "checkpoint" not in m:
        raise src.error("output.checkpoint", "missing", "e.g. checkpoint: finetuned.safetensors")
    ckpt = _resolve_path(base, _str(src, m["checkpoint"], "output.checkpoint"))
    if ckpt.suffix != ".safetensors":
        raise src.error("output.checkpoint", f"the fine-tuned model is written as safetensors; got '{ckpt.name}'",
                        f"name it {ckpt.stem}.safetensors")
    if spec.model.checkpoint is not None and _same_file(ckpt, spec.model.checkpoint):
        raise src.error("output.checkpoint", "is the checkpoint being fine-tuned (model.checkpoint)",
                        "write the fine-tuned model to a new file")
    stem = ckpt.with_suffix("")

    def path_of(key: str, default: str) -> Path:
        return _resolve_path(base, _str(src, m[key], f"output.{key}")) if key in m else Path(default)

    report = path_of("report", f"{stem}.report.json")
    state = path_of("state", f"{stem}.state.pt")
    paths = {"checkpoint": ckpt, "report": report, "state": state}
    seen: dict[Path, str] = {}
    for k, p in paths.items():
        if p.resolve() in seen:
            raise src.error(f"output.{k}", f"is the same file as output.{seen[p.resolve()]}")
        seen[p.resolve()] = k
    return OutputConfig(ckpt, report, state)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _parse_dynamics(src: YamlSource, raw: Any) -> DynamicsConfig:
    if raw is None:
        return DynamicsConfig()
    if isinstance(raw, bool):
        return DynamicsConfig(enabled=raw)
    m = _mapping(src, raw, "dynamics")
    _check_keys(src, m, DYNAMICS_KEYS, "dynamics")
    enabled = m.get("enabled", True)
    if not isinstance(enabled, bool):
        raise src.error("dynamics.enabled", f"expected true or false, got {_kind(enabled)}")
    disp = m.get("displacements", [0.05, 0.1])
    if isinstance(disp, (int, float)) and not isinstance(disp, bool):
        disp = [disp]
    if not isinstance(disp, list) or not disp:
        raise src.error("dynamics.displacements", f"expected a list of numbers, got {_kind(disp)}")
    ts = tuple(_float(src, t, f"dynamics.displacements[{i}]", minimum=None) for i, t in enumerate(disp))
    if any(t == 0 for t in ts):
        raise src.error("dynamics.displacements", "a displacement of 0 measures nothing")
    return DynamicsConfig(
        enabled=enabled,
        directions=_int(src, m.get("directions", 10), "dynamics.directions", minimum=1),
        displacements=ts,
        iterations=_int(src, m.get("iterations", 50), "dynamics.iterations", minimum=1),
        examples=_int(src, m.get("examples", 512), "dynamics.examples", minimum=1),
    )


def _fingerprint(data: Mapping[str, Any]) -> str:
    kept = {k: v for k, v in data.items() if k not in _RESUMABLE_CHANGES}
    text = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def parse_config(src: YamlSource, *, base_dir: Path | None = None) -> FinetuneConfig:
    """Validate a parsed YAML document as a fine-tune config."""
    spec = parse_spec(src, base_dir=base_dir, extra_keys=FINETUNE_KEYS)
    base = spec.base_dir
    d = src.data
    data = _parse_data(src, d.get("data"), base)
    task_loss = d.get("task_loss", "cross_entropy")
    if not isinstance(task_loss, str) or (task_loss not in TASK_LOSSES and ":" not in task_loss):
        raise src.error("task_loss", f"unknown task loss {_kind(task_loss)}",
                        did_you_mean(str(task_loss), TASK_LOSSES) or "or 'module:callable'")
    optimizer = _parse_optimizer(src, d.get("optimizer"))
    if "steps" in d and "epochs" in d:
        raise src.error("epochs", "give either 'steps' or 'epochs', not both")
    if "steps" not in d and "epochs" not in d:
        raise src.error("steps", "missing: how long to train", "add 'steps: 500' (or 'epochs: 5')")
    steps = _int(src, d["steps"], "steps", minimum=1) if "steps" in d else None
    epochs = _int(src, d["epochs"], "epochs", minimum=1) if "epochs" in d else None
    batch_size = _int(src, d.get("batch_size", 64), "batch_size", minimum=1)
    device = d.get("device", "auto")
    if not isinstance(device, str):
        raise src.error("device", f"expected auto, cpu, cuda or cuda:K, got {_kind(device)}")
    threads = _int(src, d["threads"], "threads", minimum=1) if "threads" in d else None
    penalized = sum(1 for c in spec.checks if c.weight > 0)
    regularizer = _parse_regularizer(src, d.get("regularizer"), penalized)
    if regularizer.points in ("random", "both") and spec.input.data is None and not spec.input.shape:
        raise src.error("input.shape", "random penalty points need the input shape")
    output = _parse_output(src, d.get("output"), base, spec)
    checkpoint_every = _int(src, d.get("checkpoint_every", 100), "checkpoint_every", minimum=0)
    log_every = _int(src, d.get("log_every", 10), "log_every", minimum=1)
    dynamics = _parse_dynamics(src, d.get("dynamics"))
    return FinetuneConfig(
        spec=spec,
        data=data,
        output=output,
        task_loss=task_loss,
        optimizer=optimizer,
        steps=steps,
        epochs=epochs,
        batch_size=batch_size,
        device=device,
        threads=threads,
        regularizer=regularizer,
        checkpoint_every=checkpoint_every,
        log_every=log_every,
        dynamics=dynamics,
        fingerprint=_fingerprint(d),
    )


def load_config(path: str | Path) -> FinetuneConfig:
    """Read and validate a fine-tune config file."""
    src = load_yaml(path)
    return parse_config(src, base_dir=Path(path).resolve().parent)


def config_from_dict(data: Mapping[str, Any], base_dir: str | Path | None = None) -> FinetuneConfig:
    """Validate a config given as a Python mapping (the same schema as the YAML)."""
    src = YamlSource(dict(data), "<config>")
    return parse_config(src, base_dir=Path(base_dir) if base_dir else Path.cwd())


# -- data ---------------------------------------------------------------------------------------
class TensorData:
    """Training or validation examples as two tensors with the same number of rows."""

    def __init__(self, inputs: Any, targets: Any, label: str = "data") -> None:
        self.inputs = inputs
        self.targets = targets
        self.label = label

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def batch(self, idx: Any) -> tuple[Any, Any]:
        return self.inputs[idx], self.targets[idx]


class DatasetData:
    """A map-style torch Dataset of ``(input, target)`` pairs, collated per batch."""

    def __init__(self, dataset: Any, label: str = "data") -> None:
        self.dataset = dataset
        self.label = label

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, idx: Any) -> tuple[Any, Any]:
        from torch.utils.data import default_collate

        items = [self.dataset[i] for i in idx.tolist()]
        batch = default_collate(items)
        if not isinstance(batch, (list, tuple)) or len(batch) != 2:
            raise EqauditError(f"{self.label}: dataset items must be (input, target) pairs")
        return batch[0], batch[1]


def _read_tensor(cfg: FinetuneConfig, path: Path, name: str, key: str) -> Any:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            keys = list(fh.keys())
            if name not in keys:
                raise cfg.error(key, f"no tensor '{name}' in {path.name}",
                                did_you_mean(name, keys) or ("keys: " + ", ".join(keys[:10])))
            return fh.get_tensor(name)
    except (SafetensorError, OSError) as exc:
        raise cfg.error("data.path", f"cannot read '{path}' as safetensors: {exc}") from None


def load_data(cfg: FinetuneConfig) -> tuple[TensorData | DatasetData, TensorData | DatasetData | None]:
    """The training data and the validation data (None when the config gives none)."""
    import torch

    d = cfg.data
    if d.path is not None:
        x = _read_tensor(cfg, d.path, d.inputs, "data.inputs")
        y = _read_tensor(cfg, d.path, d.targets, "data.targets")
        train: Any = _tensor_pair(cfg, x, y, "data.inputs", "data.targets", "training")
        val = None
        if d.val_inputs is not None and d.val_targets is not None:
            vp = d.val_path or d.path
            vx = _read_tensor(cfg, vp, d.val_inputs, "data.val_inputs")
            vy = _read_tensor(cfg, vp, d.val_targets, "data.val_targets")
            val = _tensor_pair(cfg, vx, vy, "data.val_inputs", "data.val_targets", "validation")
            if tuple(vx.shape[1:]) != tuple(x.shape[1:]):
                raise cfg.error("data.val_inputs", f"validation samples have shape {list(vx.shape[1:])}, "
                                f"training samples {list(x.shape[1:])}")
        return train, val

    def build(ref: str, key: str, label: str) -> Any:
        from transforms_zoo._resolve import ReferenceError_, resolve_reference

        try:
            fn = resolve_reference(ref, cfg.base_dir)
        except ReferenceError_ as exc:
            raise cfg.error(key, str(exc)) from None
        try:
            obj = fn(**dict(d.kwargs)) if callable(fn) else fn
        except Exception as exc:
            raise cfg.error(key, f"calling {ref} failed: {type(exc).__name__}: {exc}") from None
        if isinstance(obj, tuple) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj):
            return _tensor_pair(cfg, obj[0], obj[1], key, key, label)
        if isinstance(obj, torch.utils.data.TensorDataset) and len(obj.tensors) == 2:
            return _tensor_pair(cfg, obj.tensors[0], obj.tensors[1], key, key, label)
        if not (hasattr(obj, "__getitem__") and hasattr(obj, "__len__")):
            raise cfg.error(key, f"{ref} returned {type(obj).__name__}, expected a map-style Dataset of "
                            "(input, target) pairs or an (inputs, targets) tuple of tensors")
        if len(obj) == 0:
            raise cfg.error(key, f"the {label} dataset is empty")
        return DatasetData(obj, label)

    assert d.dataset is not None
    train = build(d.dataset, "data.dataset", "training")
    val = build(d.val_dataset, "data.val_dataset", "validation") if d.val_dataset else None
    return train, val


def _tensor_pair(cfg: FinetuneConfig, x: Any, y: Any, kx: str, ky: str, label: str) -> TensorData:
    if x.dim() < 1 or x.shape[0] == 0:
        raise cfg.error(kx, f"the {label} inputs have no rows (shape {list(x.shape)})")
    if y.dim() < 1 or y.shape[0] != x.shape[0]:
        raise cfg.error(ky, f"{label} targets have shape {list(y.shape)}, the inputs {x.shape[0]} rows")
    if not x.is_floating_point():
        x = x.float()
    return TensorData(x, y, label)


# -- the model call, losses and metrics ---------------------------------------------------------
def _is_oom(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower()


def _call(model: Any, x: Any, cfg: FinetuneConfig, key: str) -> Any:
    import torch

    try:
        y = model(x)
    except (torch.cuda.OutOfMemoryError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:
        if _is_oom(exc):
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise cfg.error(key, f"the model failed on a batch of shape {list(x.shape)}: "
                        f"{type(exc).__name__}: {msg}") from None
    if not isinstance(y, torch.Tensor) or y.dim() == 0 or y.shape[0] != x.shape[0]:
        what = list(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise cfg.error(key, f"the model returned {what} for a batch of {x.shape[0]}",
                        "the model must return a tensor with the batch dimension first")
    return y


def make_task_loss(cfg: FinetuneConfig) -> Callable[[Any, Any], Any]:
    """The task loss ``f(outputs, targets) -> scalar`` named by ``task_loss``."""
    import torch
    import torch.nn.functional as F

    name = cfg.task_loss
    if name == "cross_entropy":
        def ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            if y.is_floating_point():
                return F.cross_entropy(out, y.to(out.dtype))
            return F.cross_entropy(out, y)
        return ce
    if name == "mse":
        def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            y = y.to(out.dtype)
            if y.shape != out.shape:
                if y.numel() != out.numel():
                    raise cfg.error("task_loss", f"mse: outputs of shape {list(out.shape)} and targets of shape "
                                    f"{list(y.shape)} differ")
                y = y.reshape(out.shape)
            return F.mse_loss(out, y)
        return mse
    from transforms_zoo._resolve import ReferenceError_, resolve_reference

    try:
        fn = resolve_reference(name, cfg.base_dir)
    except ReferenceError_ as exc:
        raise cfg.error("task_loss", str(exc)) from None
    if not callable(fn):
        raise cfg.error("task_loss", f"'{name}' is not callable")
    return fn


def _loss_value(loss_fn: Callable, out: Any, y: Any, cfg: FinetuneConfig) -> Any:
    import torch

    try:
        loss = loss_fn(out, y)
    except EqauditError:
        raise
    except Exception as exc:
        if _is_oom(exc):
            raise
        raise cfg.error("task_loss", f"{cfg.task_loss} failed on outputs {list(out.shape)} and targets "
                        f"{list(y.shape)}: {type(exc).__name__}: {exc}") from None
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise cfg.error("task_loss", f"{cfg.task_loss} must return a scalar tensor")
    return loss.reshape(())


def evaluate(model: Any, data: TensorData | DatasetData, cfg: FinetuneConfig, device: Any,
             dtype: Any, *, batch: int = 1024) -> dict[str, Any]:
    """Task loss (mean over examples) and, for class targets, accuracy, in eval mode."""
    import torch

    loss_fn = make_task_loss(cfg)
    was = model.training
    model.eval()
    total, correct, n, classify = 0.0, 0, 0, None
    try:
        with torch.no_grad():
            for start in range(0, len(data), batch):
                idx = torch.arange(start, min(start + batch, len(data)))
                x, y = data.batch(idx)
                x, y = _to(x, device, dtype), y.to(device)
                out = _call(model, x, cfg, "data.val_inputs")
                m = x.shape[0]
                total += float(_loss_value(loss_fn, out, y, cfg)) * m
                if classify is None:
                    classify = (not y.is_floating_point()) and y.dim() == 1 and out.dim() == 2
                if classify:
                    correct += int((out.argmax(dim=1) == y).sum())
                n += m
    finally:
        model.train(was)
    return {
        "split": data.label,
        "n": n,
        "loss": total / n,
        "accuracy": correct / n if classify else None,
    }


def _to(x: Any, device: Any, dtype: Any) -> Any:
    return x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype)


# -- the trainer --------------------------------------------------------------------------------
@dataclass
class StepResult:
    step: int  # steps done, 1-based
    epoch: float
    task_loss: float
    penalty: float | None  # None on steps without the penalty
    errors: dict[str, float]


def _epoch_seed(seed: int, epoch: int) -> int:
    h = hashlib.sha256(f"eqaudit.finetune.order:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


class Trainer:
    """One optimizer step at a time, every draw keyed by ``(seed, step)``.

    ``trainer.step()`` runs the task loss on the step's batch and, on penalty steps, the
    equivariance penalty: with ``points: data`` one forward of the batch (whose outputs serve
    both the task loss and the penalty) plus one forward of the transformed points per chosen
    check.
    """

    def __init__(self, cfg: FinetuneConfig, model: Any, train: TensorData | DatasetData, device: Any,
                 *, total_steps: int | None = None, world: Any = None) -> None:
        import torch

        from ..io.checkpoint import model_dtype
        from ..audit.engine import PointSampler

        self.cfg = cfg
        self.spec = cfg.spec
        self.model = model
        self.train = train
        self.device = torch.device(device)
        self.dtype = model_dtype(model)
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise cfg.error("model", "the model has no trainable parameters")
        self.optimizer = build_optimizer(cfg.optimizer, self.params)
        self.loss_fn = make_task_loss(cfg)
        n = len(train)
        self.batch_size = min(cfg.batch_size, n)
        from ..audit.distributed import World

        self.world = world if world is not None else World()
        if self.world.size > 1 and self.batch_size % self.world.size:
            raise cfg.error("batch_size", f"batch size {self.batch_size} does not split evenly across "
                            f"{self.world.size} processes", f"use a multiple of {self.world.size}")
        self.steps_per_epoch = max(1, n // self.batch_size)
        self.total_steps = total_steps if total_steps is not None else (
            cfg.steps if cfg.steps is not None else int(cfg.epochs or 1) * self.steps_per_epoch)
        self.penalized = [j for j, c in enumerate(self.spec.checks) if c.weight > 0]
        self.points = cfg.regularizer.points
        self.samples = cfg.regularizer.samples or self.batch_size
        self.sampler = PointSampler(self.spec, self.device, self.dtype) if self.points != "data" else None
        if self.points == "both" and self.sampler is not None:
            sample_shape = tuple(train.batch(torch.arange(1))[0].shape[1:])
            if tuple(self.sampler.shape) != sample_shape:
                raise cfg.error("regularizer.points", f"'both' mixes training samples of shape {list(sample_shape)} "
                                f"with input points of shape {list(self.sampler.shape)}", "use data or random")
        self.step_idx = 0
        self._perm_epoch: int | None = None
        self._perm: Any = None
        from transforms_zoo.random import stream_id

        self._stream = stream_id("eqaudit.finetune")

    # -- deterministic draws --------------------------------------------------------------------
    def batch_indices(self, step: int) -> Any:
        """Rows of the training data used at ``step`` (0-based): a permutation per epoch."""
        import torch

        epoch, pos = divmod(step, self.steps_per_epoch)
        if self._perm_epoch != epoch:
            gen = torch.Generator(device="cpu").manual_seed(_epoch_seed(self.spec.seed, epoch))
            self._perm = torch.randperm(len(self.train), generator=gen)
            self._perm_epoch = epoch
        return self._perm[pos * self.batch_size : (pos + 1) * self.batch_size]

    def _rng(self, step: int, n: int, tag: str) -> Any:
        from transforms_zoo import SampleRNG

        rng = SampleRNG.for_range(self.spec.seed, 0, n, self.device, stream=self._stream)
        return rng.child(f"step:{step}").child(tag)

    def chosen_checks(self, step: int) -> list[int]:
        """The checks penalized at ``step``: all, or ``num_funcs`` drawn without replacement."""
        import torch

        from transforms_zoo import SampleRNG

        k = self.cfg.regularizer.num_funcs
        if k is None or k >= len(self.penalized):
            return list(self.penalized)
        rng = SampleRNG(self.spec.seed, torch.tensor([step], dtype=torch.int64), stream=self._stream).child("checks")
        picks = sorted(int(i) for i in rng.choice(k, len(self.penalized))[0])
        return [self.penalized[i] for i in picks]

    def penalty_step(self, step: int) -> bool:
        return bool(self.penalized) and step % self.cfg.regularizer.every == 0

    # -- the penalty ----------------------------------------------------------------------------
    def penalty(self, x: Any, y: Any, step: int) -> tuple[Any, dict[str, Any]]:
        """``sum weight * relu(mean error - epsilon)`` over the checks chosen at ``step``, at the
        points ``x`` whose model outputs are ``y`` (differentiable; the model's dtype)."""
        import torch

        from transforms_zoo import TransformError

        base = self._rng(step, x.shape[0], "penalty")
        total = torch.zeros((), dtype=y.dtype, device=y.device)
        errors: dict[str, Any] = {}
        for j in self.chosen_checks(step):
            check = self.spec.checks[j]
            where = f"checks[{j}]"
            in_key = f"{where}.both" if check.both else f"{where}.input"
            out_key = f"{where}.both" if check.both else f"{where}.output"
            crng = base.child(f"check:{check.name}")
            try:
                p_in = check.input.sample(crng)
                p_out = p_in if check.both else check.output.sample(crng.child("output"))
                xt = check.input.apply(x, p_in)
            except TransformError as exc:
                raise self.cfg.error(in_key, exc.message, exc.hint) from None
            b = _call(self.model, xt, self.cfg, in_key)
            try:
                a = check.output.apply(y, p_out)
            except TransformError as exc:
                raise self.cfg.error(out_key, exc.message, exc.hint) from None
            if a.shape != b.shape:
                raise self.cfg.error(out_key, f"output transform gives shape {list(a.shape[1:])} but the model's "
                                     f"output on transformed inputs has shape {list(b.shape[1:])}")
            try:
                e = check.distance(a, b.to(a.dtype)).reshape(-1).mean()
            except EqauditError as exc:
                raise exc.located(file=self.cfg.file, key=f"{where}.distance") from None
            errors[check.name] = e.detach()
            total = total + check.weight * torch.clamp_min(e - check.epsilon, 0.0)
        return total, errors

    # -- one step -------------------------------------------------------------------------------
    def step(self) -> StepResult:
        import torch

        s = self.step_idx
        self.model.train()
        x, y_true = self.train.batch(self._shard(self.batch_indices(s)))
        x, y_true = _to(x, self.device, self.dtype), y_true.to(self.device)
        data_key = "data.dataset" if self.cfg.data.dataset else "data.inputs"
        out = _call(self.model, x, self.cfg, data_key)
        task = _loss_value(self.loss_fn, out, y_true, self.cfg)
        loss = task
        pen: Any = None
        pen_value: float | None = None
        errors: dict[str, float] = {}
        if self.penalty_step(s):
            xs, ys = [], []
            if self.points in ("data", "both"):
                xs.append(x)
                ys.append(out)
            if self.points in ("random", "both"):
                assert self.sampler is not None
                rng = self._rng(s, self.samples, "random")
                if self.world.size > 1:
                    rng = rng.select(torch.arange(self.world.rank, self.samples, self.world.size, device=self.device))
                xr = self.sampler.draw(rng)
                xs.append(xr.to(x.dtype) if self.points == "both" else xr)
                ys.append(_call(self.model, xs[-1], self.cfg, "input"))
            px = xs[0] if len(xs) == 1 else torch.cat(xs)
            py = ys[0] if len(ys) == 1 else torch.cat(ys)
            pen, errs = self.penalty(px, py, s)
            loss = task + pen.to(task.dtype)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # One read back to the host per step, after the backward pass is queued: the loss, the
        # task loss, the penalty and each check's error. A non-finite loss stops the run here,
        # before the optimizer touches the weights.
        logged = [loss, task] if pen is None else [loss, task, pen, *errs.values()]
        got = torch.stack([v.detach().to(torch.float64).reshape(()) for v in logged]).tolist()
        task_value = got[1]
        if pen is not None:
            pen_value = got[2]
            errors = dict(zip(errs, got[3:]))
        if not math.isfinite(got[0]):
            raise self.cfg.error(
                "optimizer.lr", f"the loss became {got[0]} at step {s + 1} "
                f"(task loss {task_value}, penalty {pen_value})", "lower the learning rate or the check weights")
        if self.world.size > 1:
            task_value, pen_value = self._average_gradients(task_value, pen_value)
        self.optimizer.step()
        self.step_idx = s + 1
        return StepResult(s + 1, (s + 1) / self.steps_per_epoch, task_value, pen_value, errors)

    # -- data parallel --------------------------------------------------------------------------
    def _shard(self, rows: Any) -> Any:
        """This process's share of a batch: every ``world.size``-th row."""
        return rows if self.world.size == 1 else rows[self.world.rank :: self.world.size]

    def _average_gradients(self, task: float, penalty: float | None) -> tuple[float, float | None]:
        """Average the gradients (and the logged losses) over the processes, as
        DistributedDataParallel does: equal shards, so the result is the full batch's gradient."""
        import torch
        import torch.distributed as dist

        size = self.world.size
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat /= size
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
        logged = torch.tensor([task, penalty if penalty is not None else 0.0], dtype=torch.float64,
                              device=grads[0].device if grads else "cpu")
        dist.all_reduce(logged)
        logged /= size
        return float(logged[0]), (float(logged[1]) if penalty is not None else None)

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step_idx, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_idx = int(state["step"])


def build_optimizer(o: OptimizerConfig, params: Iterable[Any]) -> Any:
    import torch

    params = list(params)
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov)


# -- the learning curve -------------------------------------------------------------------------
class Curve:
    """Averages of the step results over each ``log_every`` window."""

    def __init__(self, log_every: int) -> None:
        self.log_every = log_every
        self.points: list[dict[str, Any]] = []
        self.window: dict[str, Any] = self._empty()

    @staticmethod
    def _empty() -> dict[str, Any]:
        return {"n": 0, "task": 0.0, "pen_n": 0, "pen": 0.0, "err": {}, "err_n": {}}

    def add(self, r: StepResult, total: int) -> dict[str, Any] | None:
        w = self.window
        w["n"] += 1
        w["task"] += r.task_loss
        if r.penalty is not None:
            w["pen_n"] += 1
            w["pen"] += r.penalty
        for k, v in r.errors.items():
            w["err"][k] = w["err"].get(k, 0.0) + v
            w["err_n"][k] = w["err_n"].get(k, 0) + 1
        if r.step % self.log_every == 0 or r.step == total:
            point = {
                "step": r.step,
                "epoch": round(r.epoch, 6),
                "task_loss": w["task"] / w["n"],
                "penalty": w["pen"] / w["pen_n"] if w["pen_n"] else None,
                "errors": {k: w["err"][k] / w["err_n"][k] for k in w["err"]},
            }
            self.points.append(point)
            self.window = self._empty()
            return point
        return None

    def state(self) -> dict[str, Any]:
        return {"points": self.points, "window": self.window}

    def load(self, state: Mapping[str, Any]) -> None:
        self.points = list(state["points"])
        self.window = dict(state["window"])


# -- atomic writes ------------------------------------------------------------------------------
def remove_stale_temps(paths: Iterable[Path]) -> list[Path]:
    """Delete temporary files that a killed run left beside ``paths`` (``.NAME.*.tmp``)."""
    removed = []
    for p in paths:
        pattern = os.path.join(glob.escape(str(p.parent)), glob.escape(temp_prefix(p)) + "*.tmp")
        for stale in glob.glob(pattern):
            try:
                os.unlink(stale)
                removed.append(Path(stale))
            except OSError:
                pass
    return removed


def save_state(path: Path, obj: Mapping[str, Any]) -> None:
    import torch

    atomic_write(path, lambda tmp: torch.save(dict(obj), tmp))


def load_state(cfg: FinetuneConfig, path: Path, device: Any) -> dict[str, Any]:
    import torch

    if not path.is_file():
        raise EqauditError(f"no resumable state at '{path}'", file=cfg.file, key="--resume",
                           hint="run without --resume to start from the beginning")
    try:
        state = torch.load(str(path), map_location=device, weights_only=True)
    except Exception as exc:
        raise EqauditError(f"cannot read the resumable state '{path}': {type(exc).__name__}: {exc}",
                           file=cfg.file, key="--resume", hint="run with --force to start over") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise EqauditError(f"'{path}' is not an eqaudit fine-tune state", file=cfg.file, key="--resume")
    if state.get("version") != STATE_VERSION:
        raise EqauditError(f"'{path}' has state version {state.get('version')}, this eqaudit reads {STATE_VERSION}",
                           file=cfg.file, key="--resume")
    if state.get("fingerprint") != cfg.fingerprint or state.get("seed") != cfg.spec.seed:
        raise EqauditError(
            f"the config changed since the state '{path}' was saved (only steps, epochs, output, "
            "checkpoint_every, log_every, dynamics and device may change)",
            file=cfg.file, key="--resume", hint="restore the config, or run with --force to start over")
    return state


def save_model_safetensors(model: Any, path: Path, metadata: Mapping[str, str]) -> None:
    from safetensors.torch import save_model

    atomic_write(path, lambda tmp: save_model(model, tmp, metadata=dict(metadata), force_contiguous=True))


# -- Ctrl-C -------------------------------------------------------------------------------------
class FinetuneInterrupted(Exception):
    """Ctrl-C during training: the state after the last complete step was saved to ``state``."""

    def __init__(self, step: int, total: int, state: Path) -> None:
        super().__init__(f"interrupted at step {step}/{total}")
        self.step = step
        self.total = total
        self.state = state


class _SigintFlag:
    """The first Ctrl-C sets a flag (the loop saves after the current step); the second one raises
    KeyboardInterrupt at once. Only in the main thread (signal handlers live there)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.hit = False
        self._prev: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True

    def __enter__(self) -> _SigintFlag:
        if self.enabled:
            self._prev = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, self._prev)


# -- the result ---------------------------------------------------------------------------------
@dataclass
class FinetuneResult:
    before: Any  # Report
    after: Any  # Report
    metrics_before: dict[str, Any]
    metrics_after: dict[str, Any]
    curve: list[dict[str, Any]]
    dynamics: dict[str, Any] | None
    report: dict[str, Any]
    paths: OutputConfig
    steps: int
    resumed_from: int | None

    @property
    def exit_code(self) -> int:
        """The CI gate of the final audit: 0 every check within its threshold, 1 otherwise."""
        return int(self.after.exit_code)


def report_from_dict(d: Mapping[str, Any]) -> Any:
    """Rebuild a :class:`Report` from :meth:`Report.to_dict` (a resumed run's first audit)."""
    from ..report import CheckResult, Report

    names = {f.name for f in dataclasses.fields(CheckResult)}
    checks = []
    for c in d["checks"]:
        kw = {k: (math.nan if v is None and k not in ("name",) else v) for k, v in c.items() if k in names}
        checks.append(CheckResult(**kw))
    return Report(
        checks=tuple(checks), spec=d.get("spec"), checkpoint=d.get("checkpoint"), device=d["device"],
        seed=d["seed"], samples=d["samples"], elapsed_s=d["elapsed_s"], gate=d.get("gate", "mean"),
        batch_size=d.get("batch_size"), model_was_training=d.get("model_was_training", False),
        notes=tuple(d.get("notes", ())),
    )


# -- the run ------------------------------------------------------------------------------------
def _emit(callback: Callback | None, event: str, **data: Any) -> None:
    if callback is not None:
        callback(event, data)


def check_outputs(cfg: FinetuneConfig, *, resume: bool, force: bool) -> None:
    """Refuse to overwrite an earlier run's outputs (or its resumable state) without ``force``."""
    from ..io.outputs import check_output

    o = cfg.output
    for p, key in ((o.checkpoint, "output.checkpoint"), (o.report, "output.report"), (o.state, "output.state")):
        try:
            check_output(p, key)  # writable, before the run rather than after it
        except EqauditError as exc:
            raise cfg.error(key, exc.message, exc.hint) from None
    if force or resume:
        return
    for p, key in ((o.checkpoint, "output.checkpoint"), (o.report, "output.report")):
        if p.exists():
            raise cfg.error(key, f"'{p}' exists; refusing to overwrite it",
                            "pass --force to overwrite, or --resume to continue that run")
    if o.state.exists():
        raise cfg.error("output.state", f"a resumable state of an unfinished run exists at '{o.state}'",
                        "pass --resume to continue it, or --force to start over")


def run_finetune(
    cfg: FinetuneConfig,
    *,
    resume: bool = False,
    force: bool = False,
    device: str | None = None,
    dynamics: bool | None = None,
    steps: int | None = None,
    seed: int | None = None,
    trust_checkpoint: bool = False,
    model: Any = None,
    callback: Callback | None = None,
    handle_sigint: bool = True,
) -> FinetuneResult:
    """Fine-tune, audit before and after, write the model, the state and the JSON report.

    ``device``, ``dynamics``, ``steps`` and ``seed`` override the config. ``model`` skips loading
    from the spec's ``model`` block. ``callback(event, data)`` receives ``start``, ``audit``
    (phase before/after), ``step``, ``log`` (a learning-curve point), ``checkpoint``,
    ``dynamics`` and ``done``. Ctrl-C (SIGINT, main thread) saves the state after the current
    step and raises :class:`FinetuneInterrupted`. Every user error is an :class:`EqauditError`.
    """
    import torch

    t0 = time.perf_counter()
    if steps is not None:
        if steps < 1:
            raise EqauditError(f"--steps must be >= 1, got {steps}", key="--steps")
        cfg = cfg.replace(steps=int(steps), epochs=None)
    if seed is not None:
        cfg = cfg.replace(spec=cfg.spec.replace(seed=check_seed(seed)))
    dyn = cfg.dynamics if dynamics is None else dataclasses.replace(cfg.dynamics, enabled=bool(dynamics))
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, dyn, resume=resume, force=force, device=device, trust_checkpoint=trust_checkpoint,
                    model=model, callback=callback, handle_sigint=handle_sigint, t0=t0)
    finally:
        if cfg.threads:
            torch.set_num_threads(threads)


def _run(cfg: FinetuneConfig, dyn: DynamicsConfig, *, resume: bool, force: bool, device: str | None,
         trust_checkpoint: bool, model: Any, callback: Callback | None, handle_sigint: bool,
         t0: float) -> FinetuneResult:
    import torch

    from ..audit.distributed import current_world
    from ..audit.engine import audit, resolve_device

    spec = cfg.spec
    out = cfg.output
    check_outputs(cfg, resume=resume, force=force)
    if device is not None:
        dev = resolve_device(device)
    else:
        try:
            dev = resolve_device(cfg.device)
        except EqauditError as exc:
            raise cfg.error("device", exc.message, exc.hint) from None
    world = current_world(dev)
    if world.size > 1 and dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", world.local_rank % torch.cuda.device_count())
    main = world.is_main  # under torchrun only rank 0 writes files
    if main:
        remove_stale_temps([out.checkpoint, out.report, out.state])

    train, val = load_data(cfg)
    if model is None:
        with torch.random.fork_rng():  # a model built without a checkpoint starts from seeded weights
            torch.manual_seed(spec.seed)
            model = spec.build_model(trust_checkpoint=trust_checkpoint)
    if not isinstance(model, torch.nn.Module):
        raise cfg.error("model", f"fine-tuning needs a torch.nn.Module, got {type(model).__name__}")
    model.to(dev)
    if world.size > 1:  # every process starts from rank 0's weights
        import torch.distributed as dist

        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                dist.broadcast(t.data, src=0)
    trainer = Trainer(cfg, model, train, dev, world=world)
    total = trainer.total_steps
    if spec.input.shape and cfg.regularizer.points != "random":
        sample_shape = tuple(train.batch(torch.arange(1))[0].shape[1:])
        if sample_shape != tuple(spec.input.shape):
            key = "data.dataset" if cfg.data.dataset else "data.inputs"
            raise cfg.error(key, f"training samples have shape {list(sample_shape)}, input.shape says "
                            f"{list(spec.input.shape)}", "the penalty uses the training batch (regularizer.points)")
    curve = Curve(cfg.log_every)
    metrics_split = val if val is not None else train
    cuda = [dev] if dev.type == "cuda" else []
    resumed_from: int | None = None
    train_elapsed = 0.0

    with torch.random.fork_rng(devices=cuda):
        if resume:
            state = load_state(cfg, out.state, dev)
            if int(state["step"]) > total:
                raise EqauditError(f"the saved state is at step {state['step']}, past the {total} steps configured",
                                   file=cfg.file, key="--resume", hint="raise steps, or run with --force to start over")
            trainer.load_state_dict(state)
            curve.load(state["curve"])
            torch.set_rng_state(state["rng"]["cpu"].cpu())
            if cuda and state["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), dev)
            before = report_from_dict(state["before"])
            metrics_before = dict(state["metrics_before"])
            train_elapsed = float(state.get("train_elapsed_s", 0.0))
            resumed_from = trainer.step_idx
        else:
            _emit(callback, "audit", phase="before")
            model.eval()
            before = audit(model, spec, device=dev)
            metrics_before = evaluate(model, metrics_split, cfg, dev, trainer.dtype)
            torch.manual_seed(spec.seed)

        def snapshot() -> dict[str, Any]:
            return {
                "format": STATE_FORMAT,
                "version": STATE_VERSION,
                "fingerprint": cfg.fingerprint,
                "seed": spec.seed,
                "total_steps": total,
                **trainer.state_dict(),
                "rng": {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(dev) if cuda else None},
                "curve": curve.state(),
                "before": before.to_dict(),
                "metrics_before": metrics_before,
                "train_elapsed_s": train_elapsed + (time.perf_counter() - t_train),
            }

        _emit(callback, "start", step=trainer.step_idx, total=total, resumed=resume, state=str(out.state),
              steps_per_epoch=trainer.steps_per_epoch, batch_size=trainer.batch_size)
        t_train = time.perf_counter()
        with _SigintFlag(handle_sigint) as sigint:
            while trainer.step_idx < total:
                r = trainer.step()
                point = curve.add(r, total)
                _emit(callback, "step", step=r.step, total=total, epoch=r.epoch, task_loss=r.task_loss,
                      penalty=r.penalty, errors=r.errors)
                if point is not None:
                    _emit(callback, "log", **point)
                if sigint.hit:
                    if main:
                        save_state(out.state, snapshot())
                    raise FinetuneInterrupted(r.step, total, out.state)
                if cfg.checkpoint_every and r.step % cfg.checkpoint_every == 0 and r.step < total and main:
                    save_state(out.state, snapshot())
                    _emit(callback, "checkpoint", step=r.step, path=str(out.state))
        if main:
            save_state(out.state, snapshot())
        train_elapsed += time.perf_counter() - t_train

    _emit(callback, "audit", phase="after")
    model.eval()
    after = audit(model, spec, device=dev)
    metrics_after = evaluate(model, metrics_split, cfg, dev, trainer.dtype)
    dyn_result = None
    if dyn.enabled:
        _emit(callback, "dynamics")
        dyn_result = compute_dynamics(cfg, dyn, model, train, dev, trainer.dtype)

    report = _report(cfg, dyn, before, after, metrics_before, metrics_after, curve.points, dyn_result,
                     total, trainer, resumed_from, dev, time.perf_counter() - t0, train_elapsed)
    if world.size > 1:
        report["processes"] = world.size
    if main:
        save_model_safetensors(model, out.checkpoint, {
            "format": "pt", "eqaudit": "finetune", "steps": str(total), "seed": str(spec.seed),
            "config": str(cfg.file or ""),
        })
        atomic_write(out.report, lambda tmp: Path(tmp).write_text(
            json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8"))
    _emit(callback, "done", exit_code=after.exit_code)
    return FinetuneResult(before, after, metrics_before, metrics_after, curve.points, dyn_result, report, out,
                          total, resumed_from)


def compute_dynamics(cfg: FinetuneConfig, dyn: DynamicsConfig, model: Any, train: Any, device: Any,
                     dtype: Any) -> dict[str, Any]:
    """Sharpness phi and the top Hessian eigenvalue of the task loss on the first ``examples``
    training rows, the model in eval mode (a deterministic function of the weights)."""
    import torch

    from . import dynamics as D

    n = min(dyn.examples, len(train))
    x, y = train.batch(torch.arange(n))
    x, y = _to(x, device, dtype), y.to(device)
    loss_fn = make_task_loss(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    was = model.training
    model.eval()

    def L() -> Any:
        return _loss_value(loss_fn, _call(model, x, cfg, "data.inputs"), y, cfg)

    result: dict[str, Any] = {"examples": n, "split": "train", "mode": "eval",
                              "parameters": int(sum(p.numel() for p in params))}
    try:
        sh = D.sharpness(L, params, displacements=dyn.displacements, directions=dyn.directions, seed=cfg.spec.seed)
        result["loss"] = sh.pop("loss")
        result["sharpness"] = {"definition": "mean over unit directions d (norm 1 over all parameters) and "
                               "displacements t of |L(w + t d) - L(w)|", **sh}
        try:
            result["hessian"] = {"definition": "dominant eigenvalue of the Hessian of the task loss, power "
                                 "iteration on Hessian-vector products",
                                 **D.top_hessian_eigenvalue(L, params, iterations=dyn.iterations, seed=cfg.spec.seed)}
        except RuntimeError as exc:  # an op without double backward
            result["hessian"] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    finally:
        model.train(was)
    return _finite(result)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _report(cfg: FinetuneConfig, dyn: DynamicsConfig, before: Any, after: Any, mb: dict, ma: dict,
            curve: list, dyn_result: Any, total: int, trainer: Trainer, resumed_from: int | None, dev: Any,
            elapsed: float, train_elapsed: float) -> dict[str, Any]:
    from .. import __version__

    o, r, spec = cfg.optimizer, cfg.regularizer, cfg.spec
    optim: dict[str, Any] = {"name": o.name, "lr": o.lr, "weight_decay": o.weight_decay}
    if o.name == "sgd":
        optim.update(momentum=o.momentum, nesterov=o.nesterov)
    else:
        optim["betas"] = list(o.betas)
    return _finite({
        "tool": "eqaudit",
        "command": "finetune",
        "version": __version__,
        "config": cfg.file,
        "checkpoint_in": str(spec.model.checkpoint) if spec.model.checkpoint else None,
        "checkpoint_out": str(cfg.output.checkpoint),
        "state": str(cfg.output.state),
        "device": str(dev),
        "seed": spec.seed,
        "steps": total,
        "steps_per_epoch": trainer.steps_per_epoch,
        "epochs": total / trainer.steps_per_epoch,
        "batch_size": trainer.batch_size,
        "task_loss": cfg.task_loss,
        "optimizer": optim,
        "regularizer": {"points": r.points, "samples": trainer.samples if r.points != "data" else None,
                        "num_funcs": r.num_funcs, "every": r.every,
                        "checks": [spec.checks[j].name for j in trainer.penalized]},
        "resumed_from_step": resumed_from,
        "elapsed_s": round(elapsed, 4),
        "train_elapsed_s": round(train_elapsed, 4),
        "passed": after.passed,
        "before": {"audit": before.to_dict(), "metrics": mb},
        "after": {"audit": after.to_dict(), "metrics": ma},
        "curve": curve,
        "dynamics": dyn_result,
    })
