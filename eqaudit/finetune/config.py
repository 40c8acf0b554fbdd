"""The fine-tune config: a spec plus training keys -> a validated :class:`FinetuneConfig`.

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
    threads: 1                   # CPU threads for the run (torch.set_num_threads), 1 to 1024; default: torch's.
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
      # layers:                  # layer-wise penalty (IEN): per layer weight * max(0, error - epsilon)
      #   - {name: features.0, weight: 0.1, epsilon: 0}   # ({name: all, weight: w}: every feature map)
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
      every: 0                   # every N-th step: checks' errors, Hessian eigenvalue (0: none)
      samples: 64                #   audit points of each of those points
      sharpness: false           #   the series also tracks the sharpness
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EqauditError, did_you_mean
from ..io.yaml_source import YamlSource, load_yaml
from ..spec import Spec, describe_value, parse_int, parse_spec
from .sections import (
    DataConfig,
    DynamicsConfig,
    OptimizerConfig,
    OutputConfig,
    RegularizerConfig,
    parse_data,
    parse_dynamics,
    parse_optimizer,
    parse_output,
    parse_regularizer,
)

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
TASK_LOSSES = ("cross_entropy", "mse")

#: The most CPU threads a config may ask for. A fixed cap rather than a multiple of this
#: machine's cores, so that a config valid on a workstation stays valid in CI: 1024 is beyond the
#: hardware threads of any one machine (more only oversubscribes), while 20000 made thread creation
#: fail mid-run (exit 1) and 1000000 crashed the process (segfault).
MAX_THREADS = 1024

#: keys that may change between a run and its resumption (they do not change step s's update)
RESUMABLE_CHANGES = ("steps", "epochs", "output", "checkpoint_every", "log_every", "dynamics", "device")


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
    #: sha256 (16 hex digits) of the config's keys that change the update (not RESUMABLE_CHANGES)
    fingerprint: str = ""

    @property
    def file(self) -> str | None:
        return self.spec.file

    @property
    def base_dir(self) -> Path:
        return self.spec.base_dir

    def error(self, key: str | None, message: str, hint: str | None = None) -> EqauditError:
        """An :class:`EqauditError` located at ``key`` of the config file."""
        return self.spec.error(key, message, hint)

    def replace(self, **changes: Any) -> FinetuneConfig:
        """A copy with some fields changed (command-line overrides)."""
        return dataclasses.replace(self, **changes)


def config_fingerprint(data: Mapping[str, Any]) -> str:
    """The keys of a config document that change the update, hashed (resumable keys left out)."""
    kept = {k: v for k, v in data.items() if k not in RESUMABLE_CHANGES}
    text = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def parse_config(src: YamlSource, *, base_dir: Path | None = None) -> FinetuneConfig:
    """Validate a parsed YAML document as a fine-tune config."""
    spec = parse_spec(src, base_dir=base_dir, extra_keys=FINETUNE_KEYS)
    if spec.model.checkpoint is not None and spec.model.checkpoint.suffix.lower() == ".onnx":
        raise src.error("model.checkpoint", "an ONNX graph cannot be fine-tuned (it has no trainable weights)",
                        "fine-tune the PyTorch model (its state dict and factory), then export it again")
    base = spec.base_dir
    document = src.data
    data = parse_data(src, document.get("data"), base)
    task_loss = document.get("task_loss", "cross_entropy")
    if not isinstance(task_loss, str) or (task_loss not in TASK_LOSSES and ":" not in task_loss):
        raise src.error("task_loss", f"unknown task loss {describe_value(task_loss)}",
                        did_you_mean(str(task_loss), TASK_LOSSES) or "or 'module:callable'")
    optimizer = parse_optimizer(src, document.get("optimizer"))
    steps, epochs = _parse_length(src, document)
    batch_size = parse_int(src, document.get("batch_size", 64), "batch_size", minimum=1)
    device = document.get("device", "auto")
    if not isinstance(device, str):
        raise src.error("device", f"expected auto, cpu, cuda or cuda:K, got {describe_value(device)}")
    threads = None
    if "threads" in document:
        threads = parse_int(src, document["threads"], "threads", minimum=1, maximum=MAX_THREADS)
    penalized = sum(1 for c in spec.checks if c.weight > 0)
    for index, check in enumerate(spec.checks):
        if check.mode == "lie" and check.weight > 0:
            raise src.error(f"checks[{index}].mode", "a Lie-derivative check cannot be penalized: its errors carry "
                            "no gradient", "give it weight: 0 to audit it only, or use mode: sample")
    regularizer = parse_regularizer(src, document.get("regularizer"), penalized, spec)
    if regularizer.points in ("random", "both") and not spec.input.from_data and not spec.input.shape:
        raise src.error("input.shape", "random penalty points need the input shape")
    output = parse_output(src, document.get("output"), base, spec)
    checkpoint_every = parse_int(src, document.get("checkpoint_every", 100), "checkpoint_every", minimum=0)
    log_every = parse_int(src, document.get("log_every", 10), "log_every", minimum=1)
    dynamics = parse_dynamics(src, document.get("dynamics"))
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
        fingerprint=config_fingerprint(document),
    )


def _parse_length(src: YamlSource, document: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """``steps`` or ``epochs``: exactly one of the two."""
    if "steps" in document and "epochs" in document:
        raise src.error("epochs", "give either 'steps' or 'epochs', not both")
    if "steps" not in document and "epochs" not in document:
        raise src.error("steps", "missing: how long to train", "add 'steps: 500' (or 'epochs: 5')")
    steps = parse_int(src, document["steps"], "steps", minimum=1) if "steps" in document else None
    epochs = parse_int(src, document["epochs"], "epochs", minimum=1) if "epochs" in document else None
    return steps, epochs


def load_config(path: str | Path) -> FinetuneConfig:
    """Read and validate a fine-tune config file."""
    src = load_yaml(path)
    return parse_config(src, base_dir=Path(path).resolve().parent)


def config_from_dict(data: Mapping[str, Any], base_dir: str | Path | None = None) -> FinetuneConfig:
    """Validate a config given as a Python mapping (the same schema as the YAML)."""
    src = YamlSource(dict(data), "<config>")
    return parse_config(src, base_dir=Path(base_dir) if base_dir else Path.cwd())
