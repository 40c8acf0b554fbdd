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
unwrapped. Nothing from a checkpoint is executed unless ``trust_checkpoint=True``: pickles that
reference Python classes or functions are refused with an explanation, and so are ``.pt2``
archives that carry pickled payloads.
"""

from __future__ import annotations

import inspect
import io
import json
import re
import struct
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transforms_zoo._resolve import ReferenceError_, resolve_reference

from ..errors import EqauditError

__all__ = ["ExportedModule", "load_model", "model_device", "model_dtype"]

WRAPPER_KEYS = ("model_state_dict", "state_dict", "model")
_SHOW = 5  # keys listed per category in error messages
_TRUST_HINT = (
    "pass --trust-checkpoint (trust_checkpoint=True) only if you trust the file, "
    "or save model.state_dict() instead and set model.factory"
)


# -- small helpers ------------------------------------------------------------------------------
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


def _listing(keys: list[str], what: str) -> str:
    shown = ", ".join(keys[:_SHOW])
    more = f", ... (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return f"{what} ({len(keys)}): {shown}{more}"


def _one_line(text: object, limit: int = 300) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _type_name(obj: Any) -> str:
    t = type(obj)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


@contextmanager
def _on_sys_path(base_dir: Path | None) -> Iterator[None]:
    """Put ``base_dir`` at the front of ``sys.path`` (trusted unpickling of classes beside the spec)."""
    added = base_dir is not None and str(base_dir) not in sys.path
    if added:
        sys.path.insert(0, str(base_dir))
    try:
        yield
    finally:
        if added:
            try:
                sys.path.remove(str(base_dir))
            except ValueError:
                pass


# -- the exported-program wrapper ---------------------------------------------------------------
class ExportedModule(nn.Module):
    """A ``torch.export`` program as an ordinary module.

    ``eval()``/``train()`` only flip :attr:`training`: the graph is fixed in the mode it was exported
    in (the exported module itself refuses both calls). A program exported with a fixed batch size
    (no ``dynamic_shapes``) is run in chunks of that size, the last chunk padded by repeating its
    last row, so any batch size works.
    """

    def __init__(self, program: nn.Module, fixed_batch: int | None = None, label: str = "") -> None:
        super().__init__()
        self.program = program
        self.fixed_batch = fixed_batch
        self.label = label

    def train(self, mode: bool = True) -> ExportedModule:  # noqa: D102 - see class docstring
        self.training = bool(mode)
        return self

    def _call(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.program(*args, **kwargs)
        except AssertionError as exc:  # torch.export guards (shapes, dtypes) fail this way
            if "Guard failed" not in str(exc):
                raise
            raise EqauditError(
                f"the exported program in '{self.label}' rejects this input: {_one_line(exc)}",
                key="model.checkpoint",
                hint="check input.shape, or export the model with dynamic_shapes",
            ) from None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        b = self.fixed_batch
        if (
            b is None
            or kwargs
            or len(args) != 1
            or not isinstance(args[0], torch.Tensor)
            or args[0].ndim == 0
            or args[0].shape[0] == b
            or args[0].shape[0] == 0
        ):
            return self._call(*args, **kwargs)
        x = args[0]
        outs = []
        for start in range(0, x.shape[0], b):
            chunk = x[start : start + b]
            n = chunk.shape[0]
            if n < b:
                chunk = torch.cat([chunk, chunk[-1:].expand(b - n, *chunk.shape[1:])])
            y = self._call(chunk)
            if not isinstance(y, torch.Tensor):
                raise EqauditError(
                    f"the exported program in '{self.label}' has a fixed batch size of {b} and "
                    f"returns {_type_name(y)}, so it cannot be run on a batch of {x.shape[0]}",
                    key="model.checkpoint",
                    hint="export the model with dynamic_shapes={'x': {0: torch.export.Dim('batch')}}",
                )
            outs.append(y[:n])
        return torch.cat(outs)


# -- the loader ---------------------------------------------------------------------------------
class _Loader:
    def __init__(
        self,
        checkpoint: Path | None,
        factory: str | Callable | None,
        kwargs: Any,
        base_dir: Path | None,
        trust: bool,
        map_location: Any,
        source: str | None,
    ) -> None:
        self.path = checkpoint
        self.factory = factory
        self.kwargs = kwargs
        self.base_dir = base_dir
        self.trust = trust
        self.map_location = map_location
        self.source = source

    # errors --------------------------------------------------------------------------------
    def _file(self) -> str | None:
        if self.source is not None:
            return self.source
        return str(self.path) if self.path is not None else None

    def error(self, key: str, message: str, hint: str | None = None) -> EqauditError:
        return EqauditError(message, file=self._file(), key=key, hint=hint)

    def ckpt_error(self, message: str, hint: str | None = None) -> EqauditError:
        name = self.path.name if self.path is not None else "?"
        return self.error("model.checkpoint", f"checkpoint '{name}': {message}", hint)

    # factory -------------------------------------------------------------------------------
    def factory_label(self) -> str:
        f = self.factory
        if isinstance(f, str):
            return f
        return getattr(f, "__qualname__", None) or getattr(f, "__name__", None) or _type_name(f)

    def build(self) -> nn.Module:
        """Build a fresh module from the factory (an error when there is none)."""
        f = self.factory
        if f is None:
            raise self.error(
                "model.factory",
                f"checkpoint '{self.path.name if self.path else '?'}' holds a state dict (weights only), "
                "so the model's architecture must come from a factory",
                "set model.factory in the spec, e.g. 'my_package.models:MyNet'",
            )
        kwargs = self.kwargs if self.kwargs is not None else {}
        if not isinstance(kwargs, Mapping):
            raise self.error("model.kwargs", f"expected a mapping of keyword arguments, got {_type_name(kwargs)}",
                             "write it as a mapping, e.g. kwargs: {channels: 16}")
        kwargs = dict(kwargs)
        if isinstance(f, nn.Module):  # an instance passed through the Python API
            if kwargs:
                raise self.error("model.kwargs", "the factory is already a module instance; kwargs cannot apply",
                                 "pass the class instead, or drop kwargs")
            return f
        if isinstance(f, str):
            try:
                obj = resolve_reference(f, self.base_dir)
            except ReferenceError_ as exc:
                raise self.error(
                    "model.factory", str(exc),
                    "use 'package.module:callable' or 'path/to/file.py:callable'; "
                    "module names and relative paths resolve against the spec's folder",
                ) from None
        else:
            obj = f
        label = self.factory_label()
        if isinstance(obj, nn.Module):
            if kwargs:
                raise self.error("model.kwargs", f"'{label}' is a module instance, not a class; kwargs cannot apply",
                                 "name the class or a function that builds the model, or drop kwargs")
            return obj
        if not callable(obj):
            raise self.error("model.factory", f"'{label}' is {_type_name(obj)}, not callable",
                             "name a class or function that returns an nn.Module")
        try:
            sig = inspect.signature(obj)
        except (TypeError, ValueError):
            sig = None
        if sig is not None:
            try:
                sig.bind(**kwargs)
            except TypeError as exc:
                params = [p for p in sig.parameters if p not in ("self",)]
                raise self.error(
                    "model.kwargs", f"'{label}' does not accept these kwargs: {exc}",
                    ("it takes: " + ", ".join(params)) if params else "it takes no arguments",
                ) from None
        try:
            model = obj(**kwargs)
        except EqauditError:
            raise
        except Exception as exc:
            raise self.error(
                "model.factory", f"calling '{label}' failed: {type(exc).__name__}: {_one_line(exc)}",
                "check model.kwargs and the factory's code",
            ) from None
        if not isinstance(model, nn.Module):
            raise self.error(
                "model.factory", f"'{label}' returned {_type_name(model)}, not a torch.nn.Module",
                "the factory must build and return the model",
            )
        return model

    # top level -----------------------------------------------------------------------------
    def load(self) -> nn.Module:
        if self.path is None:
            if self.factory is None:
                raise self.error("model", "needs a factory, a checkpoint, or both",
                                 "set model.factory and/or model.checkpoint")
            return self._place(self.build())
        p = self.path
        if not p.exists():
            raise self.ckpt_error(f"file '{p}' not found",
                                  "check the path; relative paths resolve against the spec's folder")
        if p.is_dir():
            raise self.ckpt_error(f"'{p}' is a directory, not a checkpoint file", "name the checkpoint file itself")
        try:
            with p.open("rb") as fh:
                head = fh.read(16)
            size = p.stat().st_size
        except OSError as exc:
            raise self.ckpt_error(f"cannot read '{p}': {exc.strerror or exc}", "check the file's permissions") from None
        if size == 0:
            raise self.ckpt_error("the file is empty", "re-save the checkpoint")

        if _looks_like_safetensors(head, size):
            return self._from_state_dict(self._read_safetensors(), "safetensors")
        if p.suffix == ".safetensors":
            raise self.ckpt_error("not a valid safetensors file (bad header)",
                                  "the file may be corrupt or truncated; re-save it with "
                                  "safetensors.torch.save_file(model.state_dict(), path)")
        names = _zip_names(p) if head.startswith(b"PK") else None
        if names is not None:
            kind = _zip_kind(names)
            if kind == "torchscript":
                return self._load_torchscript()
            if kind == "aoti":
                raise self.ckpt_error(
                    "is an AOTInductor package (compiled native code), which eqaudit does not load",
                    "save the program with torch.export.save instead",
                )
            if kind == "pt2":
                return self._load_exported(names)
            if kind is None:
                raise self.ckpt_error(
                    "is a zip archive but not a PyTorch checkpoint",
                    "expected a safetensors file, a torch.save state dict, TorchScript, or a torch.export .pt2",
                )
        return self._load_torch_pickle()

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
            raise self.ckpt_error(f"cannot read it as safetensors: {_one_line(exc)}",
                                  "the file may be corrupt or truncated; re-save it") from None

    def _load_torchscript(self) -> nn.Module:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
                model = torch.jit.load(str(self.path), map_location=self.map_location)
        except Exception as exc:
            raise self.ckpt_error(f"cannot load the TorchScript archive: {_one_line(exc)}",
                                  "the file may be corrupt or truncated; re-save it with torch.jit.save") from None
        return model

    def _load_exported(self, names: list[str]) -> nn.Module:
        if not self.trust:
            unsafe = _pt2_pickled_members(self.path, names)
            if unsafe:
                raise self.ckpt_error(
                    "this torch.export archive carries pickled Python objects ("
                    + ", ".join(unsafe[:_SHOW]) + ("..." if len(unsafe) > _SHOW else "")
                    + "); loading them could execute code from the file",
                    _TRUST_HINT,
                )
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.")
                ep = torch.export.load(str(self.path))
                module = ep.module()
        except Exception as exc:
            raise self.ckpt_error(f"cannot load the torch.export program: {type(exc).__name__}: {_one_line(exc)}",
                                  "the file may be corrupt, or saved by an incompatible torch version") from None
        wrapped = ExportedModule(module, _static_batch(ep), self.path.name)
        return self._place(wrapped)

    def _load_torch_pickle(self) -> nn.Module:
        import pickle

        try:
            obj = torch.load(str(self.path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            text = str(exc)
            refs = re.findall(r"GLOBAL ([\w.]+)", text)
            if "Unsupported global" not in text and not refs:
                raise self.ckpt_error(
                    f"not a readable PyTorch checkpoint ({_unpickling_reason(text)})",
                    "the file may be corrupt or truncated, or not a safetensors / torch.save / TorchScript "
                    "/ torch.export file; re-save it",
                ) from None
            if not self.trust:
                what = ", ".join(dict.fromkeys(refs)) or "Python classes"
                raise self.ckpt_error(
                    f"the file is a pickle that references Python code ({what}), e.g. a whole pickled "
                    "nn.Module; loading it would execute code from the file",
                    _TRUST_HINT,
                ) from None
            obj = self._trusted_load()
        except EqauditError:
            raise
        except Exception as exc:  # zip errors, EOF, bad magic number, ...
            raise self.ckpt_error(
                f"not a readable PyTorch checkpoint ({type(exc).__name__}: {_one_line(exc, 200)})",
                "the file may be corrupt or truncated, or not a safetensors / torch.save / TorchScript "
                "/ torch.export file; re-save it",
            ) from None
        if isinstance(obj, nn.Module):
            return self._place(obj)
        return self._from_state_dict(obj, "torch.save")

    def _trusted_load(self) -> Any:
        try:
            with _on_sys_path(self.base_dir):
                return torch.load(str(self.path), map_location="cpu", weights_only=False)
        except Exception as exc:
            raise self.ckpt_error(
                f"loading it with --trust-checkpoint failed: {type(exc).__name__}: {_one_line(exc)}",
                "the classes it was pickled with must be importable (same module path as when it was saved)",
            ) from None

    # state dicts ---------------------------------------------------------------------------
    def _unwrap(self, obj: Any) -> Any:
        if isinstance(obj, Mapping) and not _all_tensors(obj):
            for key in WRAPPER_KEYS:
                inner = obj.get(key)
                if isinstance(inner, nn.Module):
                    return inner
                if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                    return inner
        return obj

    def _from_state_dict(self, obj: Any, fmt: str) -> nn.Module:
        obj = self._unwrap(obj)
        if isinstance(obj, nn.Module):
            return self._place(obj)
        if not isinstance(obj, Mapping):
            raise self.ckpt_error(
                f"holds {_type_name(obj)}, not a state dict or a model",
                "save model.state_dict() (safetensors or torch.save) and set model.factory",
            )
        bad = [f"{k} ({_type_name(v)})" for k, v in obj.items()
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
        state = dict(obj)
        expected = model.state_dict()
        state = _strip_prefix(state, expected)
        problems = _diagnose(state, expected)
        if problems:
            raise self.ckpt_error(
                f"does not fit '{self.factory_label()}': " + "; ".join(problems),
                "check model.factory and model.kwargs against the architecture the checkpoint was saved from",
            )
        try:
            model.load_state_dict(state, strict=True)
        except Exception as exc:
            raise self.ckpt_error(f"loading the state dict into '{self.factory_label()}' failed: "
                                  f"{_one_line(exc)}",
                                  "check model.factory and model.kwargs") from None
        return self._place(model)


def _all_tensors(d: Mapping) -> bool:
    return all(isinstance(v, torch.Tensor) for v in d.values())


def _strip_prefix(state: dict[str, Any], expected: Mapping[str, Any]) -> dict[str, Any]:
    """Drop a wrapper prefix (``module.`` from DataParallel, ``_orig_mod.`` from torch.compile, ...)
    when every key carries it and dropping it makes the keys match the model's exactly."""
    if set(state) == set(expected) or not state:
        return state
    first = {str(k).split(".", 1)[0] for k in state}
    if len(first) == 1 and all("." in str(k) for k in state):
        prefix = first.pop() + "."
        stripped = {str(k)[len(prefix):]: v for k, v in state.items()}
        if set(stripped) == set(expected):
            return stripped
    return state


def _diagnose(state: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes, types = [], []
    for k, v in expected.items():
        got = state.get(k)
        if (isinstance(got, torch.Tensor) and isinstance(v, torch.Tensor)
                and not isinstance(v, nn.parameter.UninitializedParameter)
                and not isinstance(v, nn.parameter.UninitializedBuffer)
                and tuple(got.shape) != tuple(v.shape)):
            shapes.append(f"{k} expected {list(v.shape)} got {list(got.shape)}")
        elif (isinstance(got, torch.Tensor) and isinstance(v, torch.Tensor)
              and (v.is_floating_point() or v.is_complex()) and not (got.is_floating_point() or got.is_complex())):
            # load_state_dict would cast the integers silently: not the weights of a trained model
            types.append(f"{k} expected {str(v.dtype).removeprefix('torch.')} got {str(got.dtype).removeprefix('torch.')}")
    out = []
    if missing:
        out.append(_listing(missing, "missing keys"))
    if unexpected:
        out.append(_listing(unexpected, "unexpected keys"))
    if shapes:
        out.append(_listing(shapes, "shape mismatches"))
    if types:
        out.append(_listing(types, "integer values for floating-point tensors"))
    return out


def _unpickling_reason(text: str) -> str:
    m = re.search(r"WeightsUnpickler error:(.*?)(?:Check the documentation|$)", text, re.DOTALL)
    if m and m.group(1).strip():
        return _one_line(m.group(1), 160)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return _one_line(lines[-1] if lines else text, 160)


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


def _rel_names(names: list[str]) -> list[str]:
    """Member names without the archive's top-level folder (``archive/data.pkl`` -> ``data.pkl``)."""
    return [n.split("/", 1)[1] if "/" in n else n for n in names]


def _zip_kind(names: list[str]) -> str | None:
    rel = _rel_names(names)
    if any(r.startswith("data/aotinductor/") for r in rel):
        return "aoti"
    if "archive_format" in rel or any(r.startswith("models/") and r.endswith(".json") for r in rel):
        return "pt2"
    if "constants.pkl" in rel and any(r.startswith("code/") for r in rel):
        return "torchscript"
    if "data.pkl" in rel:
        return "torch"
    return None


def _pt2_pickled_members(path: Path, names: list[str]) -> list[str]:
    """Members of a ``.pt2`` archive that ``torch.export.load`` would unpickle with full pickle and
    that do not pass ``weights_only`` loading (i.e. whose loading could run code)."""
    unsafe: list[str] = []
    with zipfile.ZipFile(path) as zf:
        by_rel = dict(zip(_rel_names(names), names))

        def weights_only_ok(rel: str) -> bool:
            name = by_rel.get(rel)
            if name is None:
                return True
            data = zf.read(name)
            if not data:
                return True
            try:
                torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            except Exception:
                return False
            return True

        for rel in by_rel:
            if rel.startswith("data/sample_inputs/") or (
                rel.startswith(("data/weights/", "data/constants/")) and rel.endswith(".pt")
            ):
                if not weights_only_ok(rel):
                    unsafe.append(rel)
            elif rel.startswith(("data/weights/", "data/constants/")) and rel.endswith("_config.json"):
                folder = rel.rsplit("/", 1)[0]
                try:
                    config = json.loads(zf.read(by_rel[rel])).get("config", {})
                except (ValueError, AttributeError):
                    continue  # torch.export.load will report the broken archive
                for meta in config.values() if isinstance(config, dict) else ():
                    if not isinstance(meta, dict):
                        continue
                    member = f"{folder}/{meta.get('path_name', '')}"
                    if str(meta.get("path_name", "")).startswith("opaque_obj"):
                        unsafe.append(member)
                    elif meta.get("use_pickle") and not weights_only_ok(member):
                        unsafe.append(member)
    return unsafe


def _static_batch(ep: Any) -> int | None:
    """The batch size a program was exported with, when it has one tensor input with a fixed
    leading dimension (no ``dynamic_shapes``); None otherwise."""
    try:
        user_inputs = list(ep.graph_signature.user_inputs)
        if len(user_inputs) != 1:
            return None
        for node in ep.graph.nodes:
            if node.op == "placeholder" and node.name == user_inputs[0]:
                val = node.meta.get("val")
                shape = getattr(val, "shape", None)
                if shape is not None and len(shape) >= 1 and type(shape[0]) is int:
                    return int(shape[0])
    except Exception:
        return None
    return None


# -- public entry point -------------------------------------------------------------------------
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
