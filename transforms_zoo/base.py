"""The transform protocol, parameter declarations, the registry and the YAML builder.

A transform separates *drawing* its parameters from *applying* them (as kornia does):
``params = t.sample(rng)`` draws one set of parameters per sample from a :class:`SampleRNG`;
``t.apply(x, params)`` is a pure function of its arguments. Applying the same ``params`` to a model
input and to a model output replays the same random transform on both, which is what ``both:``
checks need.
"""

from __future__ import annotations

import math
import threading
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from transforms_zoo._resolve import ReferenceError_, is_reference, resolve_reference
from transforms_zoo.random import SampleRNG


class TransformError(ValueError):
    """A transform written wrongly: ``key`` is the path below the transform (``rotate.degrees``)."""

    def __init__(self, message: str, *, key: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key
        self.hint = hint

    def __str__(self) -> str:
        key = f"{self.key}: " if self.key else ""
        hint = f" ({self.hint})" if self.hint else ""
        return f"{key}{self.message}{hint}"


_REQUIRED = object()


@dataclass(frozen=True)
class Param:
    """A declared transform parameter: name, parser, default and one line of documentation.

    ``parse`` turns the YAML value into the value the transform stores, raising ``ValueError``
    with a readable message when the value is wrong.
    """

    name: str
    parse: Callable[[Any], Any]
    default: Any = _REQUIRED
    doc: str = ""
    type_doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


# -- reusable parsers ---------------------------------------------------------------------------
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def number(v: Any) -> float:
    """A finite number."""
    if not _is_number(v):
        raise ValueError(f"expected a number, got {v!r}")
    return float(v)


def positive(v: Any) -> float:
    """A finite number > 0."""
    x = number(v)
    if x <= 0:
        raise ValueError(f"expected a number > 0, got {v!r}")
    return x


#: Largest magnitude of an integer transform parameter (pixel counts, dimensions, turns).
INT_LIMIT = 2**30


def integer(v: Any) -> int:
    """An integer (a float like 2.0 is refused: pixel counts are exact)."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"expected an integer, got {v!r}")
    if abs(v) > INT_LIMIT:
        raise ValueError(f"{v} is out of range (at most {INT_LIMIT} in magnitude)")
    return int(v)


def boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {v!r}")
    return v


def number_or_range(v: Any) -> tuple[float, float]:
    """A number ``a`` (stored as ``(a, a)``) or a ``[lo, hi]`` range drawn uniformly."""
    if _is_number(v):
        return (float(v), float(v))
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(x) for x in v):
        lo, hi = float(v[0]), float(v[1])
        if lo > hi:
            raise ValueError(f"range [{v[0]}, {v[1]}] has lo > hi")
        return (lo, hi)
    raise ValueError(f"expected a number or a [lo, hi] range, got {v!r}")


def int_or_range(v: Any) -> tuple[int, int]:
    """An integer ``a`` (stored as ``(a, a)``) or an inclusive ``[lo, hi]`` integer range."""
    if isinstance(v, int) and not isinstance(v, bool):
        return (integer(v), integer(v))
    if (
        isinstance(v, (list, tuple))
        and len(v) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
    ):
        if v[0] > v[1]:
            raise ValueError(f"range [{v[0]}, {v[1]}] has lo > hi")
        for x in v:
            integer(x)
        return (int(v[0]), int(v[1]))
    raise ValueError(f"expected an integer or an inclusive [lo, hi] integer range, got {v!r}")


def one_of(*choices: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if v not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {v!r}")
        return str(v)

    parse.__doc__ = "one of " + ", ".join(choices)
    return parse


# -- the protocol -------------------------------------------------------------------------------
class Transform:
    """Base class of every zoo transform.

    Subclasses set ``name``, ``summary`` and ``params`` (a tuple of :class:`Param`), and implement
    :meth:`apply` and, when random, :meth:`sample`. Constructor keyword arguments are the declared
    parameters, parsed and validated; the parsed values are stored as attributes of the same name.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    #: What the transform acts on, for the docs ("image (..., H, W)", "points (..., 3)").
    acts_on: ClassVar[str] = "any tensor"

    def __init__(self, **kwargs: Any) -> None:
        declared = {p.name: p for p in self.params}
        for key in kwargs:
            if key not in declared:
                from eqaudit.errors import did_you_mean  # light import, no torch cost

                raise TransformError(
                    f"unknown parameter '{key}' for transform '{self.name}'",
                    key=key,
                    hint=did_you_mean(key, declared) or "it takes no parameters",
                )
        for p in self.params:
            if p.name in kwargs:
                try:
                    value = p.parse(kwargs[p.name])
                except ValueError as exc:
                    raise TransformError(str(exc), key=p.name) from None
            elif p.required:
                raise TransformError(f"transform '{self.name}' needs parameter '{p.name}'", key=p.name)
            else:
                value = p.default
            setattr(self, p.name, value)
        self._given = {k: kwargs[k] for k in kwargs}
        self.validate()

    def validate(self) -> None:
        """Cross-parameter checks; raise :class:`TransformError`."""

    # -- what subclasses implement ------------------------------------------------------------
    @property
    def is_random(self) -> bool:
        """Whether :meth:`sample` draws anything (False for fixed transforms)."""
        return False

    def sample(self, rng: SampleRNG) -> Any:
        """Draw the parameters of ``rng.n`` samples (None for fixed transforms)."""
        return None

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        """Apply to a batch ``x`` of shape ``(n, ...)`` with the parameters drawn for those rows."""
        raise NotImplementedError

    def _require_fixed(self) -> None:
        """Guard of ``apply(x, None)``: a random transform has no fixed parameters to act with
        (it would otherwise act silently with the low end of its range)."""
        if self.is_random:
            raise TransformError(f"{self.name!r} is random: pass the parameters drawn by sample()")

    # -- conveniences -------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, params: Any = None) -> torch.Tensor:
        """Apply with ``params``, or with a fresh draw from torch's global generator."""
        if params is None and self.is_random:
            params = self.sample(SampleRNG.from_torch(x.shape[0], x.device))
        return self.apply(x, params)

    def describe(self) -> str:
        """Short text for reports: ``shift(dx=1, dy=0)``."""
        if not self._given:
            return self.name
        args = ", ".join(f"{k}={_fmt(v)}" for k, v in self._given.items())
        return f"{self.name}({args})"

    def __repr__(self) -> str:
        return f"<transform {self.describe()}>"


def _fmt(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return str(v)


# -- registry -----------------------------------------------------------------------------------
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
    _load_builtins()
    if name not in _REGISTRY:
        from eqaudit.errors import did_you_mean

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
    _load_builtins()
    return sorted(_REGISTRY)


def _load_builtins() -> None:
    # Importing the package registers the built-in transforms; third-party plugins follow.
    import transforms_zoo  # noqa: F401

    _load_plugins()


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
    _load_builtins()
    return dict(_PLUGIN_FAILURES)


def plugin_origin(name: str) -> str | None:
    """The entry point that registered transform ``name`` (None for built-ins and user code)."""
    _load_builtins()
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


# -- composition and user callables -------------------------------------------------------------
class Compose(Transform):
    """Several transforms applied left to right; each draws from its own stream."""

    name = "compose"
    summary = "apply a list of transforms left to right (write a YAML list)"

    def __init__(self, parts: Sequence[Transform]) -> None:
        self.parts = tuple(parts)
        self._given = {}

    @property
    def is_random(self) -> bool:
        return any(p.is_random for p in self.parts)

    def sample(self, rng: SampleRNG) -> tuple[Any, ...]:
        return tuple(p.sample(rng.child(i)) for i, p in enumerate(self.parts))

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        if params is None:
            params = (None,) * len(self.parts)
        for part, p in zip(self.parts, params):
            x = part.apply(x, p)
        return x

    def describe(self) -> str:
        return " then ".join(p.describe() for p in self.parts) if self.parts else "identity"


class CallableTransform(Transform):
    """A user function ``f(x) -> x'`` on batches, named in a spec as ``"module:callable"``.

    Its randomness cannot be keyed per sample, so for ``both:`` it is replayed instead: ``sample``
    draws one seed per call and ``apply`` runs ``f`` under that seed, giving the same draw on
    both sides. Write a :class:`Transform` subclass for per-sample reproducible draws.
    """

    name = "callable"
    summary = "a user function on batches, given as 'package.module:callable' or 'file.py:callable'"

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], ref: str) -> None:
        self.fn = fn
        self.ref = ref
        self._given = {}

    @property
    def is_random(self) -> bool:
        return True

    def sample(self, rng: SampleRNG) -> int:
        # One seed for this batch of rows, derived from the keyed stream (first row's key).
        if rng.n == 0:
            return 0
        return int(rng.integers(0, 2**31)[0].item())

    def apply(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if params is not None:
                torch.manual_seed(int(params))
            return self.fn(x)

    def describe(self) -> str:
        return self.ref


def build(config: Any, *, base_dir: str | None = None) -> Transform:
    """Build a transform from its YAML form.

    Accepted forms: a zoo name (``"rot90"``), a one-key mapping ``{name: {param: value}}``, a list
    of these (composition, applied left to right), or ``"package.module:callable"`` for user code
    (a function on batches, a :class:`Transform` subclass or instance). Errors are
    :class:`TransformError` whose ``key`` is the path below ``config`` (``rotate.degrees``,
    ``[1].shift.dx``).
    """
    _load_builtins()
    if isinstance(config, list):
        if not config:
            raise TransformError("an empty list composes no transform", hint="write 'identity' if none is meant")
        parts = []
        for i, item in enumerate(config):
            try:
                parts.append(build(item, base_dir=base_dir))
            except TransformError as exc:
                exc.key = f"[{i}]" + ("." + exc.key if exc.key and not exc.key.startswith("[") else exc.key or "")
                raise
        if len(parts) == 1:
            return parts[0]
        return Compose(parts)
    if isinstance(config, str):
        if is_reference(config):
            try:
                obj = resolve_reference(config, base_dir)
            except ReferenceError_ as exc:
                raise TransformError(str(exc)) from None
            if isinstance(obj, Transform):
                return obj
            if isinstance(obj, type) and issubclass(obj, Transform):
                try:
                    return obj()
                except TransformError:
                    raise
                except Exception as exc:
                    raise TransformError(f"constructing {config} failed: {exc}") from None
            if not callable(obj):
                raise TransformError(f"'{config}' is not callable")
            return CallableTransform(obj, config)
        cls = get(config)
        try:
            return cls()
        except TransformError as exc:
            exc.key = f"{config}.{exc.key}" if exc.key else config
            raise
    if isinstance(config, dict):
        if len(config) != 1:
            raise TransformError(
                f"a transform mapping has exactly one key (the transform's name), got {len(config)}: "
                + ", ".join(map(str, config)),
                hint="write a list to compose several transforms",
            )
        ((name, kwargs),) = config.items()
        if not isinstance(name, str):
            raise TransformError(f"transform name must be a string, got {name!r}")
        try:
            cls = get(name)
        except TransformError as exc:
            exc.key = name
            raise
        if kwargs is None:
            kwargs = {}
        if not isinstance(kwargs, dict):
            raise TransformError(
                f"parameters of '{name}' must be a mapping, got {type(kwargs).__name__}",
                key=name,
                hint=f"write {{{name}: {{param: value}}}}",
            )
        try:
            return cls(**{str(k): v for k, v in kwargs.items()})
        except TransformError as exc:
            exc.key = f"{name}.{exc.key}" if exc.key else name
            raise
    raise TransformError(
        f"a transform is a name, a {{name: {{params}}}} mapping, a list or 'module:callable'; got {config!r}"
    )
