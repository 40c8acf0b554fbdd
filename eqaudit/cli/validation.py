"""Checks of a spec's references (files, factory, data keys) that need no model run."""

from __future__ import annotations

from transforms_zoo._resolve import ReferenceError_, resolve_reference

from ..errors import did_you_mean
from ..spec import Spec


def check_files(spec: Spec) -> None:
    """Raise EqauditError when the spec names a missing file, factory or data key."""
    ckpt = spec.model.checkpoint
    if ckpt is not None and not ckpt.is_file():
        raise spec.error("model.checkpoint", f"file '{ckpt}' not found", "paths resolve against the spec's folder")
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
    data = spec.input.data
    if data is not None:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(data.path), framework="pt") as fh:
                keys = list(fh.keys())
                if data.key not in keys:
                    raise spec.error("input.data", f"no tensor '{data.key}' in {data.path.name}",
                                     did_you_mean(data.key, keys) or "keys: " + ", ".join(keys[:10]))
                shape = list(fh.get_slice(data.key).get_shape())
        except (SafetensorError, OSError) as exc:
            raise spec.error("input.data", f"cannot read '{data.path}' as safetensors: {exc}") from None
        if spec.input.shape and list(spec.input.shape) != shape[1:]:
            raise spec.error("input.shape", f"data '{data.key}' holds samples of shape {shape[1:]}, "
                             f"the spec says {list(spec.input.shape)}")
