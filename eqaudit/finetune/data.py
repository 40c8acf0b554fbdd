"""Training and validation examples: tensors read from a safetensors file, or a dataset callable,
served in batches of rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import EqauditError
from .config import FinetuneConfig


class TensorData:
    """Training or validation examples as two tensors with the same number of rows."""

    def __init__(self, inputs: Any, targets: Any, label: str = "data") -> None:
        self.inputs = inputs
        self.targets = targets
        self.label = label

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def batch(self, rows: Any) -> tuple[Any, Any]:
        """The inputs and targets of ``rows`` (a tensor of row indices)."""
        return self.inputs[rows], self.targets[rows]


class DatasetData:
    """A map-style torch Dataset of ``(input, target)`` pairs, collated per batch."""

    def __init__(self, dataset: Any, label: str = "data") -> None:
        self.dataset = dataset
        self.label = label

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, rows: Any) -> tuple[Any, Any]:
        """The collated inputs and targets of ``rows`` (a tensor of row indices)."""
        from torch.utils.data import default_collate

        items = [self.dataset[i] for i in rows.tolist()]
        batch = default_collate(items)
        if not isinstance(batch, (list, tuple)) or len(batch) != 2:
            raise EqauditError(f"{self.label}: dataset items must be (input, target) pairs")
        return batch[0], batch[1]


Examples = TensorData | DatasetData


def move_batch(tensor: Any, device: Any, dtype: Any) -> Any:
    """``tensor`` on ``device``; floating-point tensors in ``dtype`` (the model's), others as they are."""
    return tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)


def sample_shape(data: Examples) -> tuple[int, ...]:
    """The shape of one input example (the first row's)."""
    import torch

    return tuple(data.batch(torch.arange(1))[0].shape[1:])


def _read_tensor(cfg: FinetuneConfig, path: Path, name: str, key: str, path_key: str) -> Any:
    """Tensor ``name`` of the safetensors file ``path`` (through the one reader, :mod:`eqaudit.io.tensors`):
    a missing name is an error at ``key``, an unreadable file at ``path_key``."""
    from ..io.tensors import read_tensor, tensor_names

    names: list[str] | None = None
    try:
        names = tensor_names(path)
        return read_tensor(path, name)
    except EqauditError as exc:
        raise cfg.error(key if names is not None and name not in names else path_key, exc.message, exc.hint) from None


def load_data(cfg: FinetuneConfig) -> tuple[Examples, Examples | None]:
    """The training data and the validation data (None when the config gives none)."""
    data = cfg.data
    if data.path is None:
        assert data.dataset is not None
        train = _from_callable(cfg, data.dataset, "data.dataset", "training")
        val = _from_callable(cfg, data.val_dataset, "data.val_dataset", "validation") if data.val_dataset else None
        return train, val
    inputs = _read_tensor(cfg, data.path, data.inputs, "data.inputs", "data.path")
    targets = _read_tensor(cfg, data.path, data.targets, "data.targets", "data.path")
    train = _tensor_pair(cfg, inputs, targets, "data.inputs", "data.targets", "training")
    if data.val_inputs is None or data.val_targets is None:
        return train, None
    val_file, val_key = (data.val_path, "data.val_path") if data.val_path else (data.path, "data.path")
    val_inputs = _read_tensor(cfg, val_file, data.val_inputs, "data.val_inputs", val_key)
    val_targets = _read_tensor(cfg, val_file, data.val_targets, "data.val_targets", val_key)
    val = _tensor_pair(cfg, val_inputs, val_targets, "data.val_inputs", "data.val_targets", "validation")
    if tuple(val_inputs.shape[1:]) != tuple(inputs.shape[1:]):
        raise cfg.error("data.val_inputs", f"validation samples have shape {list(val_inputs.shape[1:])}, "
                        f"training samples {list(inputs.shape[1:])}")
    return train, val


def _from_callable(cfg: FinetuneConfig, ref: str, key: str, label: str) -> Examples:
    """The examples that the ``module:callable`` ``ref`` returns (called with ``data.kwargs``)."""
    import torch

    from ..io.datasets import call_reference

    try:
        obj = call_reference(ref, cfg.base_dir, cfg.data.kwargs)
    except EqauditError as exc:
        raise cfg.error(key, exc.message, exc.hint) from None
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


def _tensor_pair(cfg: FinetuneConfig, inputs: Any, targets: Any, inputs_key: str, targets_key: str,
                 label: str) -> TensorData:
    if inputs.dim() < 1 or inputs.shape[0] == 0:
        raise cfg.error(inputs_key, f"the {label} inputs have no rows (shape {list(inputs.shape)})")
    if targets.dim() < 1 or targets.shape[0] != inputs.shape[0]:
        raise cfg.error(targets_key, f"{label} targets have shape {list(targets.shape)}, "
                        f"the inputs {inputs.shape[0]} rows")
    if not inputs.is_floating_point():
        inputs = inputs.float()
    for tensor, key, what in ((inputs, inputs_key, "inputs"), (targets, targets_key, "targets")):
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            bad = (~tensor.isfinite()).reshape(tensor.shape[0], -1).any(dim=1).nonzero()
            raise cfg.error(key, f"the {label} {what} hold NaN or infinite values ({bad.numel()} of "
                            f"{tensor.shape[0]} rows, the first row {int(bad[0])})",
                            "the loss would become NaN at the first batch that holds one")
    return TensorData(inputs, targets, label)
