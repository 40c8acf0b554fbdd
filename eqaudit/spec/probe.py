"""A dry run of a spec's input transforms on zero inputs of the declared shape, so that what
``eqaudit validate`` accepts, ``measure`` does not refuse for a spec-level reason (a permutation
longer than its dimension, an image transform on vectors, ``mask: valid`` with a transform that
changes the frame)."""

from __future__ import annotations

from typing import Any

import torch

from transforms_zoo import SampleRNG, Transform, TransformError

from ..errors import EqauditError, first_line
from ..io.yaml_source import join
from .model import CheckSpec, Spec

#: Rows of the zero batch: two, so per-sample draws that cannot share a batch are seen.
PROBE_ROWS = 2


def probe_transforms(spec: Spec, shape: tuple[int, ...] | None = None) -> None:
    """Apply every check's input transform (each group element, the Lie path at t = 0) to a batch
    of zeros of ``shape`` (default ``spec.input.shape``; give the data file's sample shape for
    ``input.data``), in float32 (float64 for a float64 input: half precision is not what a
    shape depends on, and CPUs lack some half kernels). Raises an :class:`EqauditError` at the check's key for a
    transform that cannot act on such inputs, and at ``checks[i].mask`` for ``mask: valid`` with an
    input transform that does not keep the (H, W) frame. Output transforms need the model's output
    and are not probed. Costs two samples' memory per transform."""
    shape = tuple(shape) if shape is not None else tuple(spec.input.shape)
    if not shape:
        return
    dtype = torch.float64 if spec.input.dtype == "float64" else torch.float32
    x = torch.zeros((PROBE_ROWS, *shape), dtype=dtype)
    for i, check in enumerate(spec.checks):
        where = f"checks[{i}]"
        if check.group is not None:
            for element in check.group.elements:
                _run(spec, f"{where}.group", element, lambda t: t.apply(x, None))
            continue
        key = f"{where}.{'both' if check.both else 'input'}"
        if check.mode == "lie":
            _run(spec, key, check.input, lambda t: t.lie_path(x, torch.zeros(PROBE_ROWS, dtype=x.dtype)))
            continue
        moved = _run(spec, key, check.input, lambda t: t.apply(x, t.sample(_rng(check))))
        if check.mask == "valid":
            _check_frame(spec, f"{where}.mask", check, x, moved)


def _rng(check: CheckSpec) -> SampleRNG:
    return SampleRNG.for_range(0, 0, PROBE_ROWS).child(f"check:{check.stream_name}")


def _run(spec: Spec, key: str, transform: Transform, act: Any) -> torch.Tensor:
    """``act(transform)``, its failures (and an output without one row per sample) as errors at
    ``key`` of the spec."""
    try:
        out = act(transform)
    except TransformError as exc:
        raise spec.error(join(key, exc.key) if exc.key else key, exc.message, exc.hint) from None
    except EqauditError:
        raise
    except Exception as exc:  # user code (callables, plugins) failing on inputs of the declared shape
        raise spec.error(key, f"{transform.describe()} fails on zero inputs of the declared shape: "
                         f"{first_line(exc)}", "check the transform against input.shape") from None
    if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[0] != PROBE_ROWS:
        what = f"shape {list(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise spec.error(key, f"{transform.describe()} turned a batch of {PROBE_ROWS} samples into {what}, not "
                         "one tensor row per sample", "a transform acts on each sample of the batch")
    return out


def _check_frame(spec: Spec, key: str, check: CheckSpec, x: torch.Tensor, moved: torch.Tensor) -> None:
    """``mask: valid`` compares the pixels that both transforms keep inside the input's frame."""
    if x.dim() < 3:
        raise spec.error(key, f"'mask: valid' masks images (..., H, W), but one sample has shape {list(x.shape[1:])}",
                         "remove mask")
    if tuple(moved.shape[-2:]) != tuple(x.shape[-2:]):
        raise spec.error(key, f"'mask: valid' keeps the pixels inside the input's frame, but {check.input_text} "
                         f"turns (H, W) = {list(x.shape[-2:])} into {list(moved.shape[-2:])}",
                         "use square inputs, or remove mask")
