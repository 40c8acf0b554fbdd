"""Equivariance assertions for users' own test suites.

>>> from eqaudit.testing import assert_equivariant
>>> assert_equivariant(model, [{"input": "rot90"}], shape=[1, 28, 28])       # invariance to rot90
>>> assert_equivariant(model, "specs/digits.yaml")                             # a spec file
>>> report = assert_equivariant(model, [{"both": "rotate3d"}], shape=[16, 3], bounds=[-1, 1])

A check that sets no ``threshold`` (and no ``epsilon``) gets a tolerance that follows the dtype of
the model's outputs::

    threshold = atol + rtol * scale

``scale`` is the mean size of the model's outputs measured in the check's own distance
(``dist(0, f(x))`` averaged over up to 128 of the audit's points) for the norm distances ``l1``,
``l2``, ``linf`` and ``lp:P``, and 1 for the others (``relative_l2`` and the logit/probability
distances are already relative). ``atol`` and ``rtol`` default to :data:`TOLERANCES` for the output
dtype (float64 1e-10, float32 1e-5, float16 1e-2, bfloat16 5e-2; the same value for both), or to
the ``atol=`` / ``rtol=`` arguments. Checks with their own threshold keep it.

Defaults for ``samples`` and ``seed`` come, in this order, from the call, from
:func:`defaults` (which the pytest marker ``@pytest.mark.eqaudit(samples=..., seed=...)`` uses),
from the pytest options ``--eqaudit-samples`` / ``--eqaudit-seed``, and from the spec.

This module imports torch only when an assertion runs.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .engine.tolerance import TOLERANCES, default_tolerance

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .report import Report
    from .spec import Spec

__all__ = ["TOLERANCES", "EquivarianceAssertionError", "assert_equivariant", "current_defaults", "defaults",
           "default_tolerance"]

#: Options that :func:`defaults` and the pytest plugin may set.
OPTION_NAMES = ("samples", "seed", "atol", "rtol", "device")
#: Keys of a list-of-checks call that build the spec's input block and top level.
_INPUT_KEYS = ("shape", "bounds", "data", "dataset", "resize", "dtype", "sampling")
_TOP_KEYS = ("distance", "num_funcs")
#: Arguments of :func:`eqaudit.engine.run.audit` that assert_equivariant sets itself.
_OWN_AUDIT_KEYS = ("samples", "seed", "device")

_session_defaults: dict[str, Any] = {}
_scoped_defaults: list[dict[str, Any]] = []


class EquivarianceAssertionError(AssertionError):
    """Raised by :func:`assert_equivariant`; ``report`` holds the full :class:`~eqaudit.report.Report`."""

    def __init__(self, message: str, report: Report) -> None:
        super().__init__(message)
        self.report = report


# -- defaults (set by the pytest plugin, or by users) ----------------------------------------------
def _check_options(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        if key not in OPTION_NAMES:
            from .errors import did_you_mean

            hint = did_you_mean(key, OPTION_NAMES) or ""
            raise TypeError(f"{where}: unknown option '{key}'" + (f" ({hint})" if hint else ""))
        if value is None:
            continue
        if key in ("samples", "seed"):
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "samples" else 0):
                raise TypeError(f"{where}: {key} must be an integer >= {1 if key == 'samples' else 0}, got {value!r}")
        elif key in ("atol", "rtol"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise TypeError(f"{where}: {key} must be a finite number >= 0, got {value!r}")
        out[key] = value
    return out


@contextlib.contextmanager
def defaults(**values: Any) -> Iterator[dict[str, Any]]:
    """Within the block, :func:`assert_equivariant` uses these ``samples``, ``seed``, ``atol``,
    ``rtol`` and ``device`` unless a call gives its own (``None`` leaves a value unchanged)."""
    layer = _check_options(values, "eqaudit defaults")
    _scoped_defaults.append(layer)
    try:
        yield current_defaults()
    finally:
        _scoped_defaults.remove(layer)


def _set_session_defaults(**values: Any) -> None:
    """Session-wide defaults (the pytest options); scoped :func:`defaults` take precedence."""
    _session_defaults.clear()
    _session_defaults.update(_check_options(values, "eqaudit session defaults"))


def current_defaults() -> dict[str, Any]:
    """The defaults in force: the session's, overridden by every enclosing :func:`defaults`."""
    merged = dict(_session_defaults)
    for layer in _scoped_defaults:
        merged.update(layer)
    return merged


# -- the assertion ---------------------------------------------------------------------------------
def assert_equivariant(
    model: Any,
    spec_or_checks: Spec | str | Path | Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    samples: int | None = None,
    seed: int | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    device: Any = None,
    **kwargs: Any,
) -> Report:
    """Audit ``model`` and raise :class:`EquivarianceAssertionError` (an ``AssertionError``) when a
    check exceeds its threshold; return the :class:`~eqaudit.report.Report` otherwise.

    ``spec_or_checks`` is a parsed :class:`~eqaudit.spec.Spec`, a spec file path, a spec as a
    mapping (the YAML schema), or a list of check mappings (``{"input": "rot90"}``,
    ``{"both": "rotate3d", "threshold": 1e-4}``, ...) with the input domain given as keyword
    arguments ``shape=`` (or ``data=`` / ``dataset=``), ``bounds=``, ``resize=``, ``dtype=``, ``sampling=`` and the
    spec's ``distance=`` and ``num_funcs=``. Other keyword arguments (``batch_size``,
    ``confidence``, ``gate``, ``precision``, ``compile``, ...) go to :func:`eqaudit.engine.run.audit`.

    ``model`` may be None to build it from the spec's ``model`` block. Checks without a threshold
    get ``atol + rtol * scale`` (see the module documentation). A bad spec raises
    :class:`~eqaudit.errors.EqauditError`, not an assertion error. The failure message holds the
    failing checks and the plain-text table.
    """
    __tracebackhide__ = True
    spec, own = _build_spec(spec_or_checks, kwargs)
    audit_keys = _audit_keys()
    audit_kwargs = {}
    for key in list(kwargs):
        if key in audit_keys:
            audit_kwargs[key] = kwargs.pop(key)
    if kwargs:
        from .errors import did_you_mean

        key = next(iter(kwargs))
        hint = did_you_mean(key, (*OPTION_NAMES, *_INPUT_KEYS, *_TOP_KEYS, *audit_keys))
        raise TypeError(f"assert_equivariant() got an unexpected keyword argument '{key}'"
                        + (f" ({hint})" if hint else ""))
    ambient = current_defaults()
    _check_options({"samples": samples, "seed": seed, "atol": atol, "rtol": rtol}, "assert_equivariant")
    samples = samples if samples is not None else ambient.get("samples")
    seed = seed if seed is not None else ambient.get("seed")
    atol = atol if atol is not None else ambient.get("atol")
    rtol = rtol if rtol is not None else ambient.get("rtol")
    device = device if device is not None else ambient.get("device")
    if samples is not None:
        spec = spec.replace(samples=int(samples))
    if seed is not None:
        spec = spec.replace(seed=int(seed))

    from .engine.run import audit

    tolerances: dict[int, str] = {}
    if not all(own):
        if model is None:  # build it once here, so that the scale pass and the audit share it
            model = _build_model(spec, audit_kwargs)
        spec, tolerances = _with_default_thresholds(model, spec, own, atol, rtol, device, audit_kwargs)
    report = audit(model, spec, device=device, **audit_kwargs)
    if report.passed:
        return report
    raise EquivarianceAssertionError(_failure_message(report, tolerances), report)


def _audit_keys() -> tuple[str, ...]:
    """The keyword arguments that pass through to :func:`eqaudit.engine.run.audit`."""
    import inspect

    from .engine.run import audit

    return tuple(name for name, p in inspect.signature(audit).parameters.items()
                 if p.kind is p.KEYWORD_ONLY and name not in _OWN_AUDIT_KEYS)


def _build_spec(spec_or_checks: Any, kwargs: dict[str, Any]) -> tuple[Spec, list[bool]]:
    """The spec and, per check, whether it sets its own threshold."""
    from .spec import Spec, parse_spec, spec_from_dict
    from .io.yaml_source import YamlSource, load_yaml

    domain = {k: kwargs.pop(k) for k in (*_INPUT_KEYS, *_TOP_KEYS) if k in kwargs}
    if isinstance(spec_or_checks, Spec):
        _no_domain(domain, "a Spec")
        return spec_or_checks, [c.threshold > 0 for c in spec_or_checks.checks]
    if isinstance(spec_or_checks, (str, Path)):
        _no_domain(domain, "a spec file")
        path = Path(spec_or_checks)
        src = load_yaml(path)
        return _with_sources(parse_spec(src, base_dir=path.resolve().parent))
    if isinstance(spec_or_checks, Mapping):
        _no_domain(domain, "a spec mapping")
        return _with_sources(spec_from_dict(spec_or_checks))
    if isinstance(spec_or_checks, Sequence):
        checks = list(spec_or_checks)
        if not {"shape", "data", "dataset"} & set(domain):
            raise TypeError("assert_equivariant() with a list of checks needs shape= (one sample's shape, "
                            "without the batch dimension), data= or dataset=")
        data: dict[str, Any] = {"input": {k: domain[k] for k in _INPUT_KEYS if k in domain}, "checks": checks}
        data.update({k: domain[k] for k in _TOP_KEYS if k in domain})
        for key in ("shape", "bounds"):
            value = data["input"].get(key)
            if isinstance(value, tuple) or (value is not None and hasattr(value, "tolist")):
                data["input"][key] = value.tolist() if hasattr(value, "tolist") else list(value)
        return _with_sources(parse_spec(YamlSource(data, "<assert_equivariant>"), base_dir=Path.cwd()))
    raise TypeError(
        "assert_equivariant() takes a Spec, a spec path, a spec mapping or a list of check mappings, "
        f"got {type(spec_or_checks).__name__}"
    )


def _no_domain(domain: Mapping[str, Any], what: str) -> None:
    if domain:
        keys = ", ".join(f"{k}=" for k in domain)
        raise TypeError(f"assert_equivariant(): {keys} only apply to a list of checks; {what} has its own input block")


def _with_sources(spec: Spec) -> tuple[Spec, list[bool]]:
    """A parsed spec and, per check, whether it gave ``threshold`` or ``epsilon`` (its ``threshold_source``)."""
    return spec, [c.threshold_source != "default" for c in spec.checks]


def _build_model(spec: Spec, audit_kwargs: dict[str, Any]) -> Any:
    model = spec.build_model(audit_kwargs.pop("checkpoint", None),
                             trust_checkpoint=bool(audit_kwargs.pop("trust_checkpoint", False)))
    model.eval()
    return model


def _with_default_thresholds(
    model: Any, spec: Spec, own: list[bool], atol: float | None, rtol: float | None, device: Any,
    audit_kwargs: Mapping[str, Any],
) -> tuple[Spec, dict[int, str]]:
    """Give the checks without a threshold ``atol + rtol * scale``; return the explanations."""
    import torch

    from .engine.device import Autocast, model_dtype, resolve_device
    from .engine.options import parse_precision
    from .engine.sampling import PointSampler
    from .engine.tolerance import SCALE_SAMPLES, thresholds_from_outputs
    from transforms_zoo import SampleRNG

    is_module = isinstance(model, torch.nn.Module)
    dev = resolve_device(device if device is not None else None, model if is_module else None)
    if is_module:
        model.to(dev)
    dtype = model_dtype(model) if is_module else torch.get_default_dtype()
    sampler = PointSampler(spec, dev, dtype)
    n = min(spec.samples, SCALE_SAMPLES)
    x = sampler.draw(SampleRNG.for_range(spec.seed, 0, n, dev))
    was_training = bool(is_module and model.training)
    autocast = parse_precision(audit_kwargs.get("precision")).autocast
    try:
        if is_module:
            model.eval()
        with torch.inference_mode():
            y = Autocast(model, dev, autocast)(x) if autocast is not None else model(x)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise spec.error("input.shape", f"the model failed on a batch of shape {list(x.shape)}: "
                         f"{type(exc).__name__}: {msg}") from None
    finally:
        if was_training:
            model.train(True)
    checks = [j for j, mine in enumerate(own) if not mine]
    return thresholds_from_outputs(spec, y, checks, atol=atol, rtol=rtol)


def _failure_message(report: Report, tolerances: Mapping[int, str]) -> str:
    failed = [(j, c) for j, c in enumerate(report.checks) if not c.passed]
    verb = "exceeds its" if len(failed) == 1 else "exceed their"
    lines = [f"model is not equivariant: {len(failed)} of {len(report.checks)} "
             f"check{'s' * (len(report.checks) != 1)} {verb} threshold"]
    for j, c in failed:
        line = (f"  - {c.name}: {c.gate} error {c.gated_value:.4g} > threshold {c.threshold:.4g} "
                f"(mean {c.mean:.4g}, {c.confidence:.0%} CI [{c.ci_low:.4g}, {c.ci_high:.4g}], n={c.n}, "
                f"input {c.input}, output {c.output}, distance {c.distance})")
        lines.append(line)
        if j in tolerances:
            lines.append(f"    {tolerances[j]}")
        hint = getattr(c, "hint", None)
        if hint:
            lines.append(f"    hint: {hint}")
    for note in report.notes:
        lines.append(f"  note: {note}")
    lines += ["", render_table(report)]
    return "\n".join(lines)


def render_table(report: Report, width: int = 120) -> str:
    """The report's Rich table as plain text (no ANSI escapes)."""
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, force_terminal=False, no_color=True,
                      highlight=False, legacy_windows=False)
    console.print(report.rich_table(width))
    return buf.getvalue().rstrip()
