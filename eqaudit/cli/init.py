"""``eqaudit init``: write a commented starter spec for one input shape and task (classification,
segmentation, regression or points), atomically, never over an existing file without ``--force``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import handles_errors
from .options import DebugOpt, QuietOpt

TASKS = ("classification", "segmentation", "regression", "points")

ShapeOpt = Annotated[str, typer.Option("--shape", help="Shape of one input sample, without the batch: e.g. 1,28,28.")]
TaskOpt = Annotated[str, typer.Option("--task", help="classification, segmentation, regression or points.")]
CheckpointOpt = Annotated[str, typer.Option("--checkpoint", help="The model file the spec names (model.checkpoint).")]
FactoryOpt = Annotated[Optional[str], typer.Option(
    "--factory", help="'package.module:Class' that builds the model (model.factory); commented out if not given.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing file.")]

_HEADER = """\
# eqaudit spec: {task} model, input samples of shape {shape}.
# Written by `eqaudit init`; the reference of every key is docs/spec.md, and
#   eqaudit validate {name}        checks this file without running the model,
#   eqaudit measure --spec {name}  audits the model (exit 1 when a check exceeds its threshold).
# The thresholds below are placeholders: run measure once, then set each a little above what your
# model measures (a regression gate), or at what your application needs.
model:
{factory}  checkpoint: {checkpoint}   # a state dict needs the factory; a TorchScript/exported/.onnx file does not
input:
  shape: {shape}
  bounds: [0.0, 1.0]      # inputs are drawn uniformly in [lo, hi]; or use real data instead:
  # data: inputs.safetensors:images     (a tensor of shape [N, {dims}]; replaces shape and bounds)
distance: relative_l2     # ||a - b|| / (||a|| + ||b||): 0 = exact, 1 = unrelated
samples: 1024
seed: 0
checks:
"""

_IMAGE_INVARIANT = """\
  # An invariant model: the transformed input must give the same output (output: identity).
  - name: rot90
    input: {rot}
    threshold: 0.05
  - name: hflip
    input: hflip
    threshold: 0.05
  - name: shift
    input: {{shift: {{dx: [-2, 2], dy: [-2, 2]}}}}   # whole pixels, circular
    threshold: 0.05
"""

_IMAGE_EQUIVARIANT = """\
  # An equivariant model: the output (a map of the input's height and width) must move with the
  # input. `both:` applies the SAME draw of the transform to the input and to the output.
  - name: rot90
    both: {rot}
    threshold: 0.05
  - name: hflip
    both: hflip
    threshold: 0.05
  - name: shift
    both: {{shift: {{dx: [-2, 2], dy: [-2, 2]}}}}
    threshold: 0.05
"""

_SEQUENCE = """\
  # A model of a 1-D signal: invariance to circular shifts and to reversal.
  - name: roll
    input: {roll: {shift: [-4, 4], dim: -1}}
    threshold: 0.05
  - name: reverse
    input: {flip: {dim: -1}}
    threshold: 0.05
"""

_POINTS = """\
  # A point-cloud model ({n} points in 3-D) with one prediction per cloud: invariance to rotations
  # and to the order of the points. For one output per point use `both:` instead of `input:`.
  - name: rotation
    input: rotate3d          # a uniformly random rotation per sample
    threshold: 0.05
  - name: point-order
    input: {{permute: {{dim: -2}}}}
    threshold: 0.05
"""


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,28,28"`` (or ``"[1, 28, 28]"``) -> ``(1, 28, 28)``; an :class:`EqauditError` at ``--shape`` otherwise."""
    from ..errors import EqauditError

    parts = [p.strip() for p in text.strip().strip("[]()").split(",") if p.strip()]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise EqauditError(f"expected positive sizes separated by commas, got '{text}'", key="--shape",
                           hint="e.g. --shape 1,28,28 (one sample, without the batch dimension)")
    return tuple(int(p) for p in parts)


def starter_spec(name: str, shape: tuple[int, ...], task: str, checkpoint: str, factory: str | None) -> str:
    """The text of a commented starter spec for ``task`` on samples of ``shape``."""
    from ..errors import EqauditError, did_you_mean

    if task not in TASKS:
        raise EqauditError(f"unknown task '{task}'", key="--task", hint=did_you_mean(task, TASKS))
    if task == "points" and (len(shape) < 2 or shape[-1] != 3):
        raise EqauditError(f"a point cloud has shape [N, 3], got {list(shape)}", key="--shape", hint="e.g. --shape 1024,3")
    if task == "segmentation" and len(shape) < 2:
        raise EqauditError(f"segmentation needs an image shape [C, H, W], got {list(shape)}", key="--shape")
    factory_line = f"  factory: {factory}\n" if factory else "  # factory: my_package.models:MyNet   # builds the model for a state dict\n"
    text = _HEADER.format(task=task, shape=list(shape), name=name, factory=factory_line, checkpoint=checkpoint,
                          dims=", ".join(map(str, shape)))
    square = len(shape) >= 2 and shape[-1] == shape[-2]
    rot = "rot90" if square else "{rot90: {k: 2}}   # half turns: the image is not square"
    if task == "points":
        return text + _POINTS.format(n=shape[-2])
    if len(shape) == 1:
        return text + _SEQUENCE
    return text + (_IMAGE_EQUIVARIANT if task == "segmentation" else _IMAGE_INVARIANT).format(rot=rot)


@handles_errors()
def init(
    spec: Annotated[Path, typer.Argument(help="The spec file to write.")],
    shape: ShapeOpt = ...,  # type: ignore[assignment]
    task: TaskOpt = "classification",
    checkpoint: CheckpointOpt = "model.pt",
    factory: FactoryOpt = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write a commented starter spec for one input shape and task."""
    from ..errors import EqauditError
    from ..io.atomic import write_text_atomic

    text = starter_spec(spec.name, parse_shape(shape), task, checkpoint, factory)
    if spec.exists() and not force:
        raise EqauditError("the file exists already", file=str(spec), hint="pass --force to replace it")
    if spec.exists() and not spec.is_file():
        raise EqauditError("not a regular file", file=str(spec), hint="give the path of a .yaml file to write")
    write_text_atomic(spec, text)
    if not quiet:
        typer.echo(f"wrote {spec}: edit model and the thresholds, then run: eqaudit validate {spec}")
