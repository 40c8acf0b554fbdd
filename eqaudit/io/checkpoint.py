"""Build the model under audit from a spec's ``model`` block: a factory and/or a checkpoint file.

Supported checkpoints (detected by content, not only by suffix):

========================================  ==================================  ===============
what the file holds                       how it is loaded                    needs a factory
========================================  ==================================  ===============
safetensors state dict                    ``safetensors.torch.load_file``     yes
``torch.save`` state dict (``.pt/.pth``)  ``torch.load(weights_only=True)``   yes
TorchScript archive                       ``torch.jit.load``                  no
``torch.export.save`` program (``.pt2``)  ``torch.export.load(...).module()`` no
pickled whole ``nn.Module``               refused unless trusted              no
========================================  ==================================  ===============

A ``torch.save`` dict that wraps the state dict under ``state_dict``, ``model_state_dict`` or
``model`` (what training loops usually write, next to optimizer state and epoch counters) is
unwrapped. Nothing from a checkpoint is executed unless ``trust_checkpoint=True``:

* ``torch.save`` files load with ``weights_only=True``; pickles that reference Python classes or
  functions, and plain pickles of any protocol, are refused with an explanation
  (:mod:`eqaudit.io.pickle_scan`);
* ``.pt2`` archives that ask torch to unpickle anything or carry symbolic shapes that are code
  are refused, and the load itself unpickles tensors only (:mod:`eqaudit.io.exported`);
* TorchScript archives run TorchScript, a language of tensor operations compiled by torch's C++
  runtime: they can embed any registered operator but no Python, so they load without the flag;
* a FIFO, device or other non-regular file is refused before it is opened (it would block).
"""

from __future__ import annotations

import struct
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .exported import ExportedModule, load_exported
from .onnx_model import is_onnx_path, load_onnx
from .factory import build_from_factory, factory_label, type_name
from .files import require_regular_file
from .pickle_scan import load_pickle
from .state_dict import diagnose, strip_prefix, unwrap
from ..errors import EqauditError, squeezed

__all__ = ["ExportedModule", "load_model", "model_device", "model_dtype"]

_SHOW = 5


def model_dtype(model: Any) -> torch.dtype:
    """The dtype of the model's first floating-point parameter or buffer (else the default dtype)."""
    tensors: list[Iterator[torch.Tensor]] = []
    if isinstance(model, nn.Module):
        tensors = [model.parameters(), model.buffers()]
    for it in tensors:
        for t in it:
            if t.is_floating_point():
                return t.dtype
    return torch.get_default_dtype()


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter or buffer (cpu when it has none)."""
    if isinstance(model, nn.Module):
        for it in (model.parameters(), model.buffers()):
            for t in it:
                return t.device
    return torch.device("cpu")


class _Loader:
    def __init__(self, checkpoint: Path | None, factory: str | Callable | None, kwargs: Any,
                 base_dir: Path | None, trust: bool, map_location: Any, source: str | None) -> None:
        self.path = checkpoint
        self.factory = factory
        self.kwargs = kwargs
        self.base_dir = base_dir
        self.trust = trust
        self.map_location = map_location
        self.source = source

    # errors --------------------------------------------------------------------------------
    def error(self, key: str, message: str, hint: str | None = None) -> EqauditError:
        file = self.source if self.source is not None else (str(self.path) if self.path is not None else None)
        return EqauditError(message, file=file, key=key, hint=hint)

    def ckpt_error(self, message: str, hint: str | None = None) -> EqauditError:
        name = self.path.name if self.path is not None else "?"
        return self.error("model.checkpoint", f"checkpoint '{name}': {message}", hint)

    # factory -------------------------------------------------------------------------------
    def build(self) -> nn.Module:
        """Build a fresh module from the factory (an error when there is none)."""
        if self.factory is None:
            raise self.error(
                "model.factory",
                f"checkpoint '{self.path.name if self.path else '?'}' holds a state dict (weights only), "
                "so the model's architecture must come from a factory",
                "set model.factory in the spec, e.g. 'my_package.models:MyNet'",
            )
        return build_from_factory(self.factory, self.kwargs, self.base_dir, self.error)

    # top level -----------------------------------------------------------------------------
    def load(self) -> nn.Module:
        if self.path is None:
            if self.factory is None:
                raise self.error("model", "needs a factory, a checkpoint, or both",
                                 "set model.factory and/or model.checkpoint")
            return self._place(self.build())
        head, size = self._head()
        if is_onnx_path(self.path):
            return self._place(load_onnx(self.path, self.ckpt_error))
        if _looks_like_safetensors(head, size):
            return self._from_state_dict(self._read_safetensors(), "safetensors")
        if self.path.suffix == ".safetensors":
            raise self.ckpt_error("not a valid safetensors file (bad header)",
                                  "the file may be corrupt or truncated; re-save it with "
                                  "safetensors.torch.save_file(model.state_dict(), path)")
        names = _zip_names(self.path) if head.startswith(b"PK") else None
        kind = _zip_kind(names) if names is not None else "torch"
        if kind == "torchscript":
            return self._load_torchscript()
        if kind == "aoti":
            raise self.ckpt_error("is an AOTInductor package (compiled native code), which eqaudit does not load",
                                  "save the program with torch.export.save instead")
        if kind == "pt2":
            return self._place(load_exported(self.path, self.trust, self.ckpt_error))
        if kind is None:
            raise self.ckpt_error(
                "is a zip archive but not a PyTorch checkpoint",
                "expected a safetensors file, a torch.save state dict, TorchScript, or a torch.export .pt2",
            )
        obj = load_pickle(self.path, head, self.trust, self.base_dir, self.ckpt_error)
        if isinstance(obj, nn.Module):
            return self._place(obj)
        return self._from_state_dict(obj, "torch.save")

    def _head(self) -> tuple[bytes, int]:
        """The first 16 bytes and the size of the checkpoint (a regular, non-empty file)."""
        p = self.path
        assert p is not None
        if not p.exists():
            raise self.ckpt_error(f"file '{p}' not found",
                                  "check the path; relative paths resolve against the spec's folder")
        if p.is_dir():
            raise self.ckpt_error(f"'{p}' is a directory, not a checkpoint file", "name the checkpoint file itself")
        try:
            require_regular_file(p, "the file")
        except EqauditError as exc:
            raise self.ckpt_error(exc.message, exc.hint) from None
        try:
            with p.open("rb") as fh:
                head = fh.read(16)
            size = p.stat().st_size
        except OSError as exc:
            raise self.ckpt_error(f"cannot read '{p}': {exc.strerror or exc}", "check the file's permissions") from None
        if size == 0:
            raise self.ckpt_error("the file is empty", "re-save the checkpoint")
        return head, size

    def _place(self, model: nn.Module) -> nn.Module:
        if self.map_location is not None:
            target = torch.device(self.map_location)
            if model_device(model) != target:
                model = model.to(target)
        return model

    # formats -------------------------------------------------------------------------------
    def _read_safetensors(self) -> dict[str, torch.Tensor]:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(self.path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise self.ckpt_error(f"cannot read it as safetensors: {squeezed(exc)}",
                                  "the file may be corrupt or truncated; re-save it") from None

    def _load_torchscript(self) -> nn.Module:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
                return torch.jit.load(str(self.path), map_location=self.map_location)
        except Exception as exc:  # noqa: BLE001 - torch raises anything on a broken archive
            raise self.ckpt_error(f"cannot load the TorchScript archive: {squeezed(exc)}",
                                  "the file may be corrupt or truncated; re-save it with torch.jit.save") from None

    # state dicts ---------------------------------------------------------------------------
    def _from_state_dict(self, obj: Any, fmt: str) -> nn.Module:
        obj = unwrap(obj)
        if isinstance(obj, nn.Module):
            return self._place(obj)
        if not isinstance(obj, Mapping):
            raise self.ckpt_error(f"holds {type_name(obj)}, not a state dict or a model",
                                  "save model.state_dict() (safetensors or torch.save) and set model.factory")
        bad = [f"{k} ({type_name(v)})" for k, v in obj.items()
               if not isinstance(v, torch.Tensor) and not str(k).endswith("_extra_state")]
        if bad:
            keys = ", ".join(bad[:_SHOW]) + (f", ... (+{len(bad) - _SHOW} more)" if len(bad) > _SHOW else "")
            raise self.ckpt_error(
                f"is not a state dict: {len(bad)} non-tensor value(s): {keys}",
                "save model.state_dict(), or put it under 'state_dict' / 'model_state_dict' in the saved dict",
            )
        if not obj:
            raise self.ckpt_error("holds an empty state dict", "save model.state_dict() of the trained model")
        model = self.build()
        label = factory_label(self.factory)  # type: ignore[arg-type]
        expected = model.state_dict()
        state = strip_prefix(dict(obj), expected)
        problems = diagnose(state, expected)
        if problems:
            raise self.ckpt_error(
                f"does not fit '{label}': " + "; ".join(problems),
                "check model.factory and model.kwargs against the architecture the checkpoint was saved from",
            )
        try:
            model.load_state_dict(state, strict=True)
        except Exception as exc:  # noqa: BLE001 - torch's own load errors
            raise self.ckpt_error(f"loading the state dict into '{label}' failed: {squeezed(exc)}",
                                  "check model.factory and model.kwargs") from None
        return self._place(model)


# -- format sniffing ----------------------------------------------------------------------------
def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON header starting with '{'."""
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def _zip_names(path: Path) -> list[str] | None:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return None  # e.g. truncated: let torch.load report it


def _zip_kind(names: list[str]) -> str | None:
    """``torchscript``, ``pt2``, ``aoti``, ``torch`` (a torch.save archive) or None, from member names
    (without the archive's top-level folder)."""
    rel = [n.split("/", 1)[1] if "/" in n else n for n in names]
    if any(r.startswith("data/aotinductor/") for r in rel):
        return "aoti"
    if "archive_format" in rel or any(r.startswith("models/") and r.endswith(".json") for r in rel):
        return "pt2"
    if "constants.pkl" in rel and any(r.startswith("code/") for r in rel):
        return "torchscript"
    if "data.pkl" in rel:
        return "torch"
    return None


def load_model(
    checkpoint: str | Path | None,
    *,
    factory: str | Callable | None = None,
    kwargs: dict | None = None,
    base_dir: str | Path | None = None,
    trust_checkpoint: bool = False,
    map_location: Any = "cpu",
    source: str | None = None,
) -> nn.Module:
    """Build the model from a factory and/or a checkpoint file.

    ``factory`` is ``"package.module:callable"``, ``"path/file.py:callable"`` (resolved against
    ``base_dir``) or a callable, called with ``**kwargs``. ``checkpoint`` may be a state dict
    (safetensors or ``torch.save``; needs the factory), TorchScript, or a ``torch.export`` ``.pt2``;
    with no checkpoint the factory's fresh module is returned. A relative ``checkpoint`` that does
    not exist is also looked up under ``base_dir``. ``map_location`` is where the model ends up
    (None: where the file / factory put it). ``source`` is the spec file named in errors.

    Every problem raises :class:`EqauditError` (file, ``model.*`` key, hint). Pickled Python
    objects are never unpickled unless ``trust_checkpoint`` is true.
    """
    base = Path(base_dir) if base_dir is not None else None
    path = None
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_absolute() and not path.exists() and base is not None and (base / path).exists():
            path = base / path
    loader = _Loader(path, factory, kwargs, base, trust_checkpoint, map_location,
                     str(source) if source is not None else None)
    return loader.load()
