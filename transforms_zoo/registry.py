"""The registry of transform names: built-ins register on import, installed plugins (entry-point
group ``eqaudit.transforms``) are loaded on the first lookup."""

from __future__ import annotations

import threading
import types
from typing import Any

from transforms_zoo.errors import TransformError, did_you_mean
from transforms_zoo.protocol import Transform

_REGISTRY: dict[str, type[Transform]] = {}


def register(cls: type[Transform]) -> type[Transform]:
    """Class decorator: make a transform available to specs under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"transform name '{cls.name}' is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def get(name: str) -> type[Transform]:
    """The registered transform class called ``name``."""
    _load_plugins()
    if name not in _REGISTRY:
        if name in _PLUGIN_FAILURES:
            raise TransformError(
                f"transform '{name}' comes from a plugin that failed to load: {_PLUGIN_FAILURES[name]}",
                hint="fix or uninstall the package that provides it",
            )
        hint = did_you_mean(name, _REGISTRY) or "run 'eqaudit transforms' for the list"
        if _PLUGIN_FAILURES:
            hint += "; plugins that failed to load: " + ", ".join(sorted(_PLUGIN_FAILURES))
        raise TransformError(f"unknown transform '{name}'", hint=hint)
    return _REGISTRY[name]


def names() -> list[str]:
    """Names of all registered transforms, sorted."""
    _load_plugins()
    return sorted(_REGISTRY)


# -- third-party plugins (entry-point group ``eqaudit.transforms``) -----------------------------
#: The entry-point group through which installed packages add transforms.
ENTRY_POINT_GROUP = "eqaudit.transforms"

_PLUGINS_LOADED = False
_PLUGINS_LOADING = False
_PLUGIN_LOCK = threading.RLock()
#: entry-point name -> why it failed (one line, naming the entry point and its package)
_PLUGIN_FAILURES: dict[str, str] = {}
#: transform name -> the entry point that registered it
_PLUGIN_ORIGINS: dict[str, str] = {}


def _load_plugins() -> None:
    """Load every ``eqaudit.transforms`` entry point, once, on the first registry lookup.

    An entry point names a :class:`Transform` subclass (``pkg.mod:MyTransform``; registered under
    its ``name``), an iterable of them, or a module whose import registers transforms with
    :func:`register` (``pkg.transforms``). A plugin that fails to import or to register is
    skipped, never fatal: its failure is kept in :func:`plugin_failures` and reported, as a
    :class:`TransformError` naming the entry point, only when a spec uses its name.
    """
    global _PLUGINS_LOADED, _PLUGINS_LOADING
    if _PLUGINS_LOADED:
        return
    with _PLUGIN_LOCK:  # other threads wait here until the plugins are in
        if _PLUGINS_LOADED or _PLUGINS_LOADING:
            return  # done, or a lookup by a plugin while it loads (same thread: the lock is re-entrant)
        _PLUGINS_LOADING = True
        try:
            try:
                from importlib.metadata import entry_points

                eps = list(entry_points(group=ENTRY_POINT_GROUP))
            except Exception as exc:  # a broken installation must not break the registry
                _PLUGIN_FAILURES["<entry points>"] = f"reading the '{ENTRY_POINT_GROUP}' entry points failed: {exc}"
                eps = []
            seen: set[tuple[str, str]] = set()
            for ep in sorted(eps, key=lambda e: (e.name, e.value)):
                if (ep.name, ep.value) in seen:  # the same distribution found twice on sys.path
                    continue
                seen.add((ep.name, ep.value))
                _load_plugin(ep)
        finally:
            _PLUGINS_LOADING = False
            _PLUGINS_LOADED = True


def _plugin_label(ep: Any) -> str:
    dist = getattr(ep, "dist", None)
    origin = ""
    if dist is not None:
        try:
            origin = f" from {dist.metadata['Name'] or dist.name} {dist.version}"
        except Exception:
            origin = ""
    return f"entry point '{ep.name} = {ep.value}' (group {ENTRY_POINT_GROUP}{origin})"


def _load_plugin(ep: Any) -> None:
    label = _plugin_label(ep)
    before = dict(_REGISTRY)

    def failed(why: str) -> None:
        for added in set(_REGISTRY) - set(before):  # a broken plugin contributes nothing
            del _REGISTRY[added]
        _PLUGIN_FAILURES[ep.name] = f"{label}: {why}"

    try:
        obj = ep.load()
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        failed(f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__)
        return
    except SystemExit as exc:  # a plugin that exits at import must not end the CLI
        failed(f"SystemExit({exc.code}) at import")
        return
    try:
        classes = _plugin_classes(obj)
        for cls in classes:
            register(cls)
    except (TypeError, ValueError) as exc:
        failed(str(exc))
        return
    for name in set(_REGISTRY) - set(before):
        _PLUGIN_ORIGINS[name] = label
    for cls in classes:  # named by the entry point but imported (and registered) earlier
        _PLUGIN_ORIGINS.setdefault(cls.name, label)


def _plugin_classes(obj: Any) -> list[type[Transform]]:
    if isinstance(obj, types.ModuleType):
        return []  # importing it registered its transforms
    if isinstance(obj, type) and issubclass(obj, Transform):
        return [obj]
    if isinstance(obj, (list, tuple)) and all(isinstance(c, type) and issubclass(c, Transform) for c in obj):
        return list(obj)
    what = f"{obj.__module__}.{obj.__qualname__}" if isinstance(obj, type) else type(obj).__name__
    raise TypeError(f"expected a transforms_zoo.Transform subclass, a list of them or a module, got {what}")


def plugin_failures() -> dict[str, str]:
    """Entry points of the ``eqaudit.transforms`` group that failed to load: name -> reason."""
    _load_plugins()
    return dict(_PLUGIN_FAILURES)


def plugin_origin(name: str) -> str | None:
    """The entry point that registered transform ``name`` (None for built-ins and user code)."""
    _load_plugins()
    return _PLUGIN_ORIGINS.get(name)


def _reset_plugins() -> None:
    """Forget loaded plugins (for tests): unregister their transforms and load again next time."""
    global _PLUGINS_LOADED
    with _PLUGIN_LOCK:
        for name in _PLUGIN_ORIGINS:
            _REGISTRY.pop(name, None)
        _PLUGIN_ORIGINS.clear()
        _PLUGIN_FAILURES.clear()
        _PLUGINS_LOADED = False


