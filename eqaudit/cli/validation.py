"""What ``eqaudit validate`` checks beyond parsing, without building the model: the files and
factory a spec names, the audit's data (``input.data`` or ``input.dataset``, read as ``measure``
reads it) and every tensor a fine-tune config names (its ``data`` keys), and
a dry run of every check's input transforms (parameters drawn with seed 0) on a zero sample of
the declared shape, so that what validate accepts, measure does not refuse for a spec reason."""

from __future__ import annotations

from typing import Any

import torch

from transforms_zoo import TransformError
from transforms_zoo._resolve import ReferenceError_, resolve_reference
from transforms_zoo.random import SampleRNG

from ..engine.sampling import load_input_data
from ..errors import EqauditError, first_line
from ..io.files import require_regular_file
from ..io.tensors import tensor_shape
from ..spec import Spec


def check_files(spec: Spec) -> None:
    """Raise EqauditError when the spec names a missing file, factory or data key."""
    ckpt = spec.model.checkpoint
    if ckpt is not None:
        try:
            require_regular_file(ckpt, "checkpoint")
        except EqauditError as exc:
            raise spec.error("model.checkpoint", exc.message, "paths resolve against the spec's folder"
                             if not ckpt.exists() else exc.hint) from None
    if spec.model.factory is not None:
        try:
            obj = resolve_reference(spec.model.factory, spec.base_dir)
        except ReferenceError_ as exc:
            raise spec.error("model.factory", str(exc)) from None
        if not callable(obj):
            raise spec.error("model.factory", f"'{spec.model.factory}' is not callable")
    if ckpt is None and spec.model.factory is None:
        raise spec.error("model", "needs a factory, a checkpoint, or a CHECKPOINT on the command line",
                         "set model.factory and/or model.checkpoint")
    if spec.input.from_data:
        _data_shape(spec)  # read as measure reads it: what validate accepts, measure does not refuse


def check_config_data(config: Any) -> None:
    """Open every tensor a fine-tune config names (``data.inputs``/``targets`` and the validation
    keys) and compare their rows; a dataset callable is left to the run."""
    data, spec = config.data, config.spec
    if data.path is None:
        return
    inputs = _shape(spec, data.path, data.inputs, "data.inputs")
    targets = _shape(spec, data.path, data.targets, "data.targets")
    if inputs[:1] != targets[:1]:
        raise spec.error("data.targets", f"'{data.targets}' has {targets[:1]} rows, '{data.inputs}' has {inputs[:1]}")
    if data.val_inputs is not None and data.val_targets is not None:
        path = data.val_path or data.path
        _shape(spec, path, data.val_inputs, "data.val_inputs")
        _shape(spec, path, data.val_targets, "data.val_targets")


def _shape(spec: Spec, path: Any, name: str, key: str) -> list[int]:
    try:
        return tensor_shape(path, name)
    except EqauditError as exc:
        raise spec.error(key, exc.message, exc.hint) from None


def sample_shape(spec: Spec) -> list[int]:
    """The shape of one sample: ``input.shape``, or the data's rows."""
    if spec.input.shape or not spec.input.from_data:
        return list(spec.input.shape)
    return _data_shape(spec)


#: The spec whose data was last read and its sample shape: validate reads the data (a dataset
#: callable may be slow) once for check_files and the dry run.
_READ: list[Any] = [None, None]


def _data_shape(spec: Spec) -> list[int]:
    """The shape of one sample of the spec's data, read as ``measure`` reads it (once per spec)."""
    if _READ[0] is not spec:
        _READ[:] = [spec, list(load_input_data(spec).shape[1:])]
    return list(_READ[1])


def dry_run_transforms(spec: Spec) -> None:
    """Apply every check's input transforms, parameters drawn with seed 0, to one zero sample of
    the declared shape (group checks: every element). Lie checks differentiate along a path
    through the model and are left to the run."""
    dtype = getattr(torch, spec.input.dtype) if spec.input.dtype else torch.float32
    x = torch.zeros(1, *sample_shape(spec), dtype=dtype)
    rng = SampleRNG(0, torch.arange(1))
    for j, check in enumerate(spec.checks):
        where = f"checks[{j}]"
        if check.mode == "lie":
            continue
        if check.group is not None:
            for element in check.group.elements:
                _apply(spec, element, x, None, f"{where}.group")
            continue
        key = f"{where}.both" if check.both else f"{where}.input"
        try:
            params = check.input.sample(rng.child(f"check:{check.stream_name}"))
        except TransformError as exc:
            raise spec.error(key, exc.message, exc.hint) from None
        moved = _apply(spec, check.input, x, params, key)
        if check.mask == "valid" and not check.both and check.output.name == "identity" \
                and moved.shape[-2:] != x.shape[-2:]:
            raise spec.error(f"{where}.mask", f"'mask: valid' needs an input transform that keeps the image size; "
                             f"{check.input.describe()} maps {list(x.shape[-2:])} to {list(moved.shape[-2:])}",
                             "drop the mask, or give the check an output transform (or both: true)")


def _apply(spec: Spec, transform: Any, x: torch.Tensor, params: Any, key: str) -> torch.Tensor:
    """``transform.apply(x, params)``; a failure is an error at ``key``."""
    try:
        out = transform.apply(x, params)
    except TransformError as exc:
        raise spec.error(key, exc.message, exc.hint) from None
    except Exception as exc:  # noqa: BLE001 - the transform's own failure on this shape
        raise spec.error(key, f"transform {transform.describe()} failed on shape {list(x.shape[1:])}: "
                         f"{first_line(exc)}") from None
    if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[0] != x.shape[0]:
        raise spec.error(key, f"transform {transform.describe()} does not return one tensor row per sample")
    return out
