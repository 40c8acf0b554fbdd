"""Samples where users keep them, as one tensor of rows: a tensor in a safetensors, ``.npy``,
``.npz`` or ``.pt``/``.pth`` file, a folder of images, or the inputs of a ``torch`` Dataset that a
``module:callable`` returns. Nothing here runs a file as code: ``.npy``/``.npz`` are read with
``allow_pickle=False`` and ``.pt`` with ``torch.load(weights_only=True)``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import EqauditError
from .files import require_regular_file
from .images import read_image_folder
from .tensors import missing_key, read_tensor

__all__ = ["MAX_STACKED_ELEMENTS", "KEYLESS_SUFFIXES", "call_reference", "dataset_inputs", "read_data"]

#: A Dataset (or an image folder) is read into memory once; at most this many elements in all
#: (2^29: 2 GiB of float32).
MAX_STACKED_ELEMENTS = 1 << 29
#: Files that hold one array, named without ``:key``.
KEYLESS_SUFFIXES = (".npy",)
_TORCH_SUFFIXES = (".pt", ".pth")


def read_data(path: Path, key: str | None, shape: tuple[int, ...] = (), *, resize: bool = False) -> torch.Tensor:
    """The samples stored at ``path`` (under ``key`` where the format has keys), as a tensor whose
    dimension 0 indexes the samples; integer and bool data become float32.

    A folder is read as images of ``shape`` (:func:`~eqaudit.io.images.read_image_folder`). Raises
    :class:`EqauditError` without a location (callers add their key), naming the file and key.
    """
    path = Path(path)
    if path.is_dir():
        data = read_image_folder(path, shape, resize=resize, max_elements=MAX_STACKED_ELEMENTS)
    else:
        require_regular_file(path, "data file")
        suffix = path.suffix.lower()
        if suffix in (".npy", ".npz"):
            data = _read_numpy(path, key)
        elif suffix in _TORCH_SUFFIXES:
            data = _read_torch(path, key)
        else:
            if key is None:
                raise EqauditError(f"'{path}' needs a tensor name", hint=f"write '{path.name}:key'")
            data = read_tensor(path, key)
    return _as_samples(data, _label(path, key))


def _label(path: Path, key: str | None) -> str:
    return f"'{path}'" if key is None else f"'{key}' in '{path}'"


def _read_numpy(path: Path, key: str | None) -> Any:
    import numpy as np

    npz = path.suffix.lower() == ".npz"
    if npz and key is None:
        raise EqauditError(f"'{path}' is an .npz archive of several arrays: name one",
                           hint=f"write '{path.name}:key'")
    if not npz and key is not None:
        raise EqauditError(f"'{path}' holds one array, it has no key '{key}'", hint=f"write '{path.name}' alone")
    try:
        with open(path, "rb") as fh:
            if not npz:
                return _numeric(np.load(fh, allow_pickle=False), _label(path, key))
            with np.load(fh, allow_pickle=False) as archive:
                keys = list(archive.files)
                if key not in keys:
                    raise missing_key(path, str(key), keys, "array")
                return _numeric(archive[key], _label(path, key))
    except EqauditError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise EqauditError(f"{_label(path, key)} is an object array (Python objects, read only by unpickling)",
                               hint="save a numeric array: np.save(path, np.asarray(x, dtype=np.float32))") from None
        raise _unreadable(path, "NumPy", exc) from None
    except (OSError, EOFError, KeyError, TypeError) as exc:
        raise _unreadable(path, "NumPy", exc) from None


def _unreadable(path: Path, what: str, exc: BaseException) -> EqauditError:
    why = " ".join(str(exc).split())[:200]
    return EqauditError(f"cannot read '{path}' as a {what} file: {why}",
                        hint="the file may be corrupt or truncated, or not in the format its suffix says")


def _numeric(arr: Any, label: str) -> torch.Tensor:
    """A NumPy array of numbers as a tensor (refusing text, objects, dates, complex numbers)."""
    import numpy as np

    if arr.dtype.kind not in "biuf":
        raise EqauditError(f"{label} has dtype {arr.dtype}, not numbers",
                           hint="save the samples as a numeric (float or integer) array")
    if arr.dtype.kind in "biu":
        arr = arr.astype(np.float32)
    elif not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return torch.from_numpy(np.ascontiguousarray(arr))


def _read_torch(path: Path, key: str | None) -> torch.Tensor:
    import pickle

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise EqauditError(f"'{path}' holds more than tensors (loading it would run code): "
                           f"{' '.join(str(exc).split())[:160]}",
                           hint="save a tensor or a dict of tensors: torch.save({'x': x}, path)") from None
    except (RuntimeError, OSError, EOFError, ValueError, AttributeError, TypeError) as exc:
        raise _unreadable(path, "torch", exc) from None
    if isinstance(obj, torch.Tensor):
        if key is not None:
            raise EqauditError(f"'{path}' holds one tensor, not a dict with key '{key}'",
                               hint=f"write '{path.name}' alone")
        return obj
    if not isinstance(obj, Mapping):
        raise EqauditError(f"'{path}' holds a {type(obj).__name__}, expected a tensor or a dict of tensors",
                           hint="save a tensor or a dict of tensors: torch.save({'x': x}, path)")
    keys = [str(k) for k in obj]
    if key is None:
        raise EqauditError(f"'{path}' holds a dict of tensors: name one", hint=f"write '{path.name}:key' (keys: "
                           + ", ".join(keys[:10]) + ")")
    if key not in obj:
        raise missing_key(path, key, keys)
    value = obj[key]
    if not isinstance(value, torch.Tensor):
        raise EqauditError(f"{_label(path, key)} is a {type(value).__name__}, expected a tensor")
    return value


def _as_samples(data: torch.Tensor, label: str) -> torch.Tensor:
    """``data`` checked to have rows of numbers; integer and bool data as float32."""
    if data.is_complex():
        raise EqauditError(f"{label} has dtype {data.dtype}, not real numbers", hint="save a real-valued tensor")
    if data.dim() < 1 or data.shape[0] == 0:
        raise EqauditError(f"{label} has no rows (shape {list(data.shape)})",
                           hint="dimension 0 indexes the samples")
    return data if data.is_floating_point() else data.to(torch.float32)


def call_reference(ref: str, base_dir: Path, kwargs: Mapping[str, Any] | None = None) -> Any:
    """What the ``module:callable`` (or ``file.py:callable``) ``ref`` returns when called with
    ``kwargs`` (a non-callable attribute is returned as it is). Errors name ``ref``, no location."""
    from transforms_zoo._resolve import ReferenceError_, resolve_reference

    try:
        fn = resolve_reference(ref, base_dir)
    except ReferenceError_ as exc:
        raise EqauditError(str(exc)) from None
    try:
        return fn(**dict(kwargs or {})) if callable(fn) else fn
    except Exception as exc:  # noqa: BLE001 - the user's code failed: say how, without a traceback
        raise EqauditError(f"calling {ref} failed: {type(exc).__name__}: {exc}") from None


def dataset_inputs(dataset: Any, ref: str, max_elements: int = MAX_STACKED_ELEMENTS) -> torch.Tensor:
    """The inputs of a map-style ``dataset`` stacked into one tensor: the first element of each item
    (an item that is a tensor or array is the input itself). Read once, at most ``max_elements``."""
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise EqauditError(f"{ref} returned {type(dataset).__name__}, expected a map-style torch Dataset",
                           hint="return a torch.utils.data.Dataset whose items are (input, ...) tuples")
    n = len(dataset)
    if n == 0:
        raise EqauditError(f"the dataset of {ref} is empty")
    rows = [_item_input(dataset, 0, ref)]
    if n * rows[0].numel() > max_elements:
        raise EqauditError(f"the dataset of {ref} holds {n} inputs of shape {list(rows[0].shape)}: more than "
                           f"{max_elements:,} elements in all, too many to read into memory",
                           hint="return a subset (torch.utils.data.Subset) for the audit")
    for i in range(1, n):
        rows.append(_item_input(dataset, i, ref))
        if rows[-1].shape != rows[0].shape:
            raise EqauditError(f"item {i} of {ref}'s dataset has an input of shape {list(rows[-1].shape)}, "
                               f"item 0 {list(rows[0].shape)}", hint="every input must have the same shape")
    return _as_samples(torch.stack(rows), f"the dataset of {ref}")


def _item_input(dataset: Any, i: int, ref: str) -> torch.Tensor:
    try:
        item = dataset[i]
    except Exception as exc:  # noqa: BLE001 - the user's dataset failed
        raise EqauditError(f"item {i} of {ref}'s dataset failed: {type(exc).__name__}: {exc}") from None
    x = item[0] if isinstance(item, (tuple, list)) and item else item
    if not isinstance(x, torch.Tensor):
        if type(x).__module__ == "numpy" and hasattr(x, "dtype"):
            x = _numeric(x, f"item {i} of {ref}'s dataset")
        else:
            raise EqauditError(f"item {i} of {ref}'s dataset has a {type(x).__name__} input, expected a tensor",
                               hint="the first element of each item is the model input, a tensor")
    if x.is_complex() or not (x.is_floating_point() or x.dtype in (torch.bool, torch.uint8, torch.int8,
                                                                     torch.int16, torch.int32, torch.int64)):
        raise EqauditError(f"item {i} of {ref}'s dataset has a {x.dtype} input, not real numbers")
    return x.detach().cpu()
