"""``torch.export`` programs (``.pt2``): load them without running code from the file, and run them
as ordinary modules (fixed-batch programs in chunks).

``torch.export.load`` can run code from an archive in three ways, none of which depends on where
a member sits in the zip, so none is checked by guessing member paths:

* ``torch.load(..., weights_only=False)`` on weights, constants and sample inputs (a config entry
  with ``use_pickle``, a legacy or fallback payload): every ``torch.load`` during an untrusted
  load is forced to ``weights_only=True`` (torch's own ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` switch);
* ``pickle.loads`` / the TorchScript unpickler on constants named ``opaque_obj*``/``custom_obj*``;
* ``sympy.sympify`` (which calls ``eval``) on every symbolic-shape ``expr_str`` of the program.

Before loading, every member of the archive (duplicates included) that parses as JSON is read:
a ``use_pickle`` that is not ``false``, an opaque or custom object, or an ``expr_str`` that is not a
plain sympy expression refuses the file; so does any member that is a pickle ``weights_only``
cannot load. The graph's operators are checked by torch's own verifier at load.
"""

from __future__ import annotations

import ast
import io
import json
import logging
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import EqauditError, squeezed

__all__ = ["ExportedModule", "load_exported", "unsafe_members"]

_SHOW = 5
#: Members up to this size are read whole; a larger one that starts like JSON or a pickle is
#: refused as too large to inspect (configs and payloads are small; weights are raw bytes).
_MAX_INSPECTED = 256 << 20
_OBJECT_PREFIXES = ("custom_obj", "opaque_obj")


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
                f"the exported program in '{self.label}' rejects this input: {squeezed(exc)}",
                key="model.checkpoint",
                hint="check input.shape, or export the model with dynamic_shapes",
            ) from None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        b = self.fixed_batch
        x = args[0] if len(args) == 1 and not kwargs else None
        if b is None or not isinstance(x, torch.Tensor) or x.ndim == 0 or x.shape[0] in (b, 0):
            return self._call(*args, **kwargs)
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
                    f"returns {type(y).__name__}, so it cannot be run on a batch of {x.shape[0]}",
                    key="model.checkpoint",
                    hint="export the model with dynamic_shapes={'x': {0: torch.export.Dim('batch')}}",
                )
            outs.append(y[:n])
        return torch.cat(outs)


# -- what in an archive could run code ------------------------------------------------------------
@lru_cache(maxsize=1)
def _sympy_callables() -> frozenset[str]:
    """Names a symbolic shape may call: sympy's expression classes and torch's shape functions."""
    import sympy
    import torch.utils._sympy.functions as shape_functions

    names = set()
    for namespace in (vars(sympy), vars(shape_functions)):
        names |= {k for k, v in namespace.items() if isinstance(v, type) and issubclass(v, sympy.Basic)}
    return frozenset(names)


_PLAIN_STRING = re.compile(r"[A-Za-z0-9_.+\-]*")
_PLAIN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_ARITHMETIC = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub, ast.UAdd,
               ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.And, ast.Or, ast.Not)


def safe_sym_expr(text: object) -> bool:
    """Whether ``text`` is a plain sympy expression (what ``srepr`` writes: sympy classes called
    with numbers, names and short literal strings) that ``sympify`` can evaluate without running
    anything else; attribute access, subscripts, lambdas and builtins are not."""
    if not isinstance(text, str) or len(text) > 100_000:
        return False
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError):
        return False
    import builtins

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in _sympy_callables()):
                return False
        elif isinstance(node, ast.Name):
            if not _PLAIN_NAME.fullmatch(node.id) or (hasattr(builtins, node.id) and node.id not in ("True", "False")):
                return False
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, str) and not _PLAIN_STRING.fullmatch(node.value):
                return False
            if not isinstance(node.value, (str, int, float, bool, type(None))):
                return False
        elif not isinstance(node, (ast.Expression, ast.keyword, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare,
                                   ast.Load, *_ARITHMETIC)):
            return False
    return True


def _json_findings(value: Any, member: str, found: list[str]) -> None:
    """Append to ``found`` what in a parsed JSON member asks torch to unpickle or evaluate."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "use_pickle" in item and item["use_pickle"] is not False:
                found.append(f"{member} (a pickled payload: {item.get('path_name', '?')})")
            path_name = item.get("path_name")
            if isinstance(path_name, str) and path_name.startswith(_OBJECT_PREFIXES):
                found.append(f"{member} (a pickled object: {path_name})")
            if "expr_str" in item and not safe_sym_expr(item["expr_str"]):
                found.append(f"{member} (a symbolic shape that is code: {squeezed(item['expr_str'], 80)})")
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _parses_as_pickle(data: bytes) -> bool:
    try:
        for _ in pickletools.genops(io.BytesIO(data)):
            pass
    except Exception:
        return False
    return True


def _pickle_findings(data: bytes, member: str, found: list[str]) -> None:
    """A member that is a ``torch.save`` file or a pickle must load with ``weights_only=True``."""
    is_zip = data.startswith(b"PK\x03\x04")
    if not is_zip and not (data[:1] == b"\x80" and data[1:2] in b"\x02\x03\x04\x05" and _parses_as_pickle(data)):
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:
        found.append(member)


def _first_byte(member: Any) -> bytes:
    """The first byte of a zip member that is not JSON whitespace (b"" when there is none)."""
    while chunk := member.read(1 << 16):
        text = chunk.lstrip(b" \t\r\n")
        if text:
            return text[:1]
    return b""


def unsafe_members(path: Path) -> list[str]:
    """What in the ``.pt2`` archive at ``path`` would run code when torch loads it (empty: none).

    Every zip entry is opened, duplicates and unusual names included, and each that looks like
    JSON or a pickle is read whole: the verdict depends on the contents, never on which member
    torch resolves a name to. An entry that cannot be read makes the archive unsafe (torch's
    reader might read it differently)."""
    found: list[str] = []
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            try:
                with archive.open(info) as member:
                    data = member.read() if info.file_size <= _MAX_INSPECTED else _first_byte(member)
            except Exception as exc:  # noqa: BLE001 - any unreadable entry: refuse, do not guess
                found.append(f"{info.filename} (unreadable: {type(exc).__name__})")
                continue
            if info.file_size > _MAX_INSPECTED:
                if data in (b"{", b"[", b"P", b"\x80"):
                    found.append(f"{info.filename} (too large to inspect)")
                continue
            if data.lstrip()[:1] in (b"{", b"["):
                try:
                    parsed = json.loads(data)
                except (ValueError, RecursionError):
                    parsed = None
                if parsed is not None:
                    _json_findings(parsed, info.filename, found)
                    continue
            if data:
                _pickle_findings(data, info.filename, found)
    return list(dict.fromkeys(found))


# -- loading ------------------------------------------------------------------------------------
@contextmanager
def _weights_only_everywhere(untrusted: bool) -> Iterator[None]:
    """Force every ``torch.load`` to ``weights_only=True`` while an untrusted archive loads (torch
    passes ``weights_only=False`` for pickled payloads), and keep torch's log lines and warnings
    (tracebacks of a failed load) from printing before eqaudit's own error."""
    saved = {k: os.environ.get(k) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    previous_disable = logging.root.manager.disable
    if untrusted:
        os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
        os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous_disable)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def load_exported(path: Path, trust: bool, error: Callable[[str, str], EqauditError]) -> ExportedModule:
    """Load the ``.pt2`` program at ``path`` as an :class:`ExportedModule`.

    Unless ``trust``, an archive with anything that would run code (:func:`unsafe_members`) is
    refused with ``error(message, hint)``, and the load itself unpickles nothing but tensors."""
    from .pickle_scan import TRUST_HINT

    if not trust:
        unsafe = unsafe_members(path)
        if unsafe:
            shown = ", ".join(unsafe[:_SHOW]) + ("..." if len(unsafe) > _SHOW else "")
            raise error(f"this torch.export archive carries pickled Python objects or code ({shown}); "
                        "loading them could execute code from the file", TRUST_HINT)
    try:
        with _weights_only_everywhere(untrusted=not trust):
            program = torch.export.load(str(path))
            module = program.module()
    except Exception as exc:  # noqa: BLE001 - torch raises anything on a broken archive
        if not trust and isinstance(exc, pickle.UnpicklingError):
            raise error(f"this torch.export archive carries pickled Python objects ({squeezed(exc, 160)}); "
                        "loading them could execute code from the file", TRUST_HINT) from None
        raise error(f"cannot load the torch.export program: {type(exc).__name__}: {squeezed(exc)}",
                    "the file may be corrupt, or saved by an incompatible torch version") from None
    return ExportedModule(module, _static_batch(program), path.name)


def _static_batch(program: Any) -> int | None:
    """The batch size a program was exported with, when it has one tensor input with a fixed
    leading dimension (no ``dynamic_shapes``); None otherwise."""
    try:
        user_inputs = list(program.graph_signature.user_inputs)
        if len(user_inputs) != 1:
            return None
        for node in program.graph.nodes:
            if node.op == "placeholder" and node.name == user_inputs[0]:
                shape = getattr(node.meta.get("val"), "shape", None)
                if shape is not None and len(shape) >= 1 and type(shape[0]) is int:
                    return int(shape[0])
    except Exception:  # noqa: BLE001 - an unusual signature: no fixed batch
        return None
    return None
