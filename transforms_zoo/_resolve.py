"""Resolve ``"package.module:attr"`` and ``"path/to/file.py:attr"`` references to Python objects."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transforms_zoo.errors import first_line


class ReferenceError_(ValueError):
    """A ``module:attr`` reference that cannot be resolved (message says why and what to do)."""


def is_reference(text: object) -> bool:
    """True for strings of the form ``something:attr`` (and not a Windows drive letter)."""
    return isinstance(text, str) and ":" in text and not text.startswith(":") and not text.endswith(":")


@contextlib.contextmanager
def _on_sys_path(base: Path) -> Iterator[None]:
    """``base`` at the front of ``sys.path`` while the body runs (left alone when already there)."""
    entry = str(base)
    if entry in sys.path:
        yield
        return
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        try:
            sys.path.remove(entry)
        except ValueError:  # the imported code removed it itself
            pass


def resolve_reference(ref: str, base_dir: str | Path | None = None) -> Any:
    """Import ``module:attr`` (dotted attrs allowed) or ``file.py:attr``.

    Relative file paths resolve against ``base_dir``; module names are looked up with ``base_dir``
    at the front of ``sys.path``, so a spec can name modules that sit beside it.
    """
    if not is_reference(ref):
        raise ReferenceError_(f"'{ref}' is not a reference of the form 'module:callable'")
    target, _, attr = ref.rpartition(":")
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_absolute():
            path = base / path
        if not path.is_file():
            raise ReferenceError_(f"file '{path}' does not exist")
        mod_name = f"_eqaudit_user_{abs(hash(str(path.resolve())))}"
        module = sys.modules.get(mod_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None:
                raise ReferenceError_(f"cannot import '{path}'")
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as exc:  # user code failed at import
                del sys.modules[mod_name]
                raise ReferenceError_(f"importing '{path}' failed: {first_line(exc)}") from exc
    else:
        try:
            with _on_sys_path(base):
                module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            raise ReferenceError_(
                f"module '{target}' not found ({exc.name} is missing)",
            ) from exc
        except Exception as exc:
            raise ReferenceError_(f"importing '{target}' failed: {first_line(exc)}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ReferenceError_(f"'{target}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    return obj


def reference_file(ref: str, base_dir: str | Path | None = None) -> Path | None:
    """The source file that ``ref`` (``file.py:attr`` or ``module:attr``) is read from, or None
    when it names no file (a built-in or namespace module, or one that cannot be found).

    Resolves like :func:`resolve_reference` (relative paths and module names against
    ``base_dir``) without running the module when it is not imported yet.
    """
    if not is_reference(ref):
        return None
    target = ref.rpartition(":")[0]
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    if target.endswith(".py"):
        path = Path(target).expanduser()
        path = path if path.is_absolute() else base / path
        return path if path.is_file() else None
    module = sys.modules.get(target)
    origin = getattr(getattr(module, "__spec__", None), "origin", None) if module is not None else None
    if origin is None:
        try:
            with _on_sys_path(base):
                found = importlib.util.find_spec(target)
        except Exception:  # a parent package that fails to import, a malformed name
            found = None
        origin = found.origin if found is not None else None
    path = Path(origin) if origin else None
    return path if path is not None and path.is_file() else None
