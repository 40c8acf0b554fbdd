"""Named tensors from safetensors files (``input.data``, the fine-tune's ``data.inputs``): the one
reader, so every caller refuses pipes, devices and corrupt files, and names a missing key alike."""

from __future__ import annotations

from pathlib import Path

import torch

from .files import require_regular_file
from ..errors import EqauditError, did_you_mean

__all__ = ["missing_key", "read_tensor", "tensor_names", "tensor_shape"]

_HINT_CORRUPT = "the file may be corrupt or truncated; re-save it with safetensors.torch.save_file"


def missing_key(path: Path, key: str, keys: list[str], what: str = "tensor") -> EqauditError:
    """The error for a ``key`` that the file at ``path`` lacks; the hint names the closest key or lists some."""
    return EqauditError(f"no {what} '{key}' in '{path}'",
                        hint=did_you_mean(key, keys) or "keys: " + (", ".join(keys[:10]) or "none"))


def _open(path: Path):  # noqa: ANN202 - safetensors' handle has no public type
    from safetensors import safe_open

    return safe_open(str(path), framework="pt", device="cpu")


def _read(path: Path, name: str | None, job: str) -> object:
    """Open ``path`` and return its keys (``job='keys'``), the shape of ``name`` or the tensor."""
    from safetensors import SafetensorError

    require_regular_file(path, "data file")
    try:
        with _open(path) as fh:
            keys = list(fh.keys())
            if job == "keys":
                return keys
            if name not in keys:
                raise missing_key(path, str(name), keys)
            if job == "shape":
                return list(fh.get_slice(name).get_shape())
            return fh.get_tensor(name)
    except EqauditError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        why = " ".join(str(exc).split())[:200]
        raise EqauditError(f"cannot read '{path}' as safetensors: {why}", hint=_HINT_CORRUPT) from None


def read_tensor(path: Path, name: str) -> torch.Tensor:
    """The tensor ``name`` from the safetensors file ``path``.

    Raises :class:`EqauditError` without a location (callers add their spec key with
    ``.located(...)``): a path that is not a regular file, a file that is not safetensors, or a
    missing ``name`` (the hint lists the keys or the closest one).
    """
    return _read(Path(path), name, "tensor")  # type: ignore[return-value]


def tensor_shape(path: Path, name: str) -> list[int]:
    """The shape of tensor ``name`` in ``path`` without reading its data (errors as :func:`read_tensor`)."""
    return _read(Path(path), name, "shape")  # type: ignore[return-value]


def tensor_names(path: Path) -> list[str]:
    """The tensor names in the safetensors file ``path`` (errors as :func:`read_tensor`)."""
    return _read(Path(path), None, "keys")  # type: ignore[return-value]
