"""The audit's results as data: :class:`CheckResult` per check and :class:`Report` for the run,
with what follows from them (pass or fail, penalty, exit code) computed in one place, and the
JSON form both ways (:meth:`Report.to_dict` and :meth:`Report.from_dict`)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import eqaudit.report.render as render  # not "from . import": that would import the package itself

from .._version import __version__

GATES = ("mean", "upper")


def gated_value(gate: str, mean: float, ci_high: float) -> float:
    """The figure compared with the threshold: the mean, or (``gate="upper"``) the upper
    confidence bound."""
    return ci_high if gate == "upper" else mean


def within(gate: str, mean: float, ci_high: float, threshold: float) -> bool:
    """Whether the gated figure is at most the threshold (False for NaN)."""
    return bool(gated_value(gate, mean, ci_high) <= threshold)


@dataclass(frozen=True)
class CheckResult:
    """The estimate for one check. Field names are the JSON contract (add, never rename);
    ``passed``, ``penalty`` and ``gated_value`` follow from them."""

    name: str
    input: str
    output: str
    distance: str
    n: int
    mean: float
    std: float
    stderr: float
    ci_low: float
    ci_high: float
    confidence: float
    epsilon: float
    threshold: float
    weight: float
    max: float = math.nan
    gate: str = "mean"
    p50: float = math.nan
    p95: float = math.nan
    p99: float = math.nan
    quantile_n: int = 0
    noise_floor: float = math.nan
    hint: str | None = None
    #: ``group:`` checks: one entry per group element (element, n, mean, std, ci_low, ci_high, ...).
    elements: list[dict[str, Any]] | None = None
    #: Per-layer errors (``layers:`` in the spec): name, n, mean, std, ci_low, ci_high, max, or skipped.
    layers: list[dict[str, Any]] | None = None
    #: ``mask:`` of the check: ``none``, or ``valid`` (only pixels both transforms keep in frame).
    mask: str = "none"
    #: Why the check could not be measured (its figures are then NaN); None when it was.
    error: str | None = None
    #: How ``ci_low``/``ci_high`` were computed: ``normal``, or ``wilson`` (0/1 errors; in JSON only then).
    interval: str = "normal"
    #: ``worst_of`` checks: K, the grid parameter, and where the maximum was (in JSON only then).
    worst_of: dict[str, Any] | None = None
    #: Where ``threshold`` comes from: ``spec``, ``epsilon`` or ``dtype`` (see eqaudit.engine.tolerance).
    threshold_source: str = "spec"

    @property
    def gated_value(self) -> float:
        """The figure compared with the threshold: the mean, or the upper confidence bound."""
        return gated_value(self.gate, self.mean, self.ci_high)

    @property
    def passed(self) -> bool:
        """Measured, and the gated figure is at most the threshold."""
        return self.error is None and within(self.gate, self.mean, self.ci_high, self.threshold)

    @property
    def penalty(self) -> float:
        """``weight * max(0, mean - epsilon)``: the check's term of the fine-tune objective."""
        return self.weight * max(0.0, self.mean - self.epsilon)

    def to_dict(self) -> dict[str, Any]:
        """The JSON fields (non-finite numbers as None); ``error`` only when there is one, ``interval``
        only when it is not the normal approximation."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if ((f.name == "error" and self.error is None) or (f.name == "interval" and self.interval == "normal")
                    or (f.name == "worst_of" and self.worst_of is None)):
                continue
            out[f.name] = getattr(self, f.name)
            if f.name == "weight":  # the derived figures, where the JSON contract has them
                out["penalty"], out["passed"] = self.penalty, self.passed
        return json_safe(out)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CheckResult:
        """The inverse of :meth:`to_dict` (None back to NaN in number fields)."""
        kw = {}
        for f in dataclasses.fields(cls):
            if f.name in d:
                value = d[f.name]
                kw[f.name] = math.nan if value is None and f.type == "float" else value
        return cls(**kw)


@dataclass(frozen=True)
class Report:
    """The result of one audit."""

    checks: tuple[CheckResult, ...]
    spec: str | None
    checkpoint: str | None
    device: str
    seed: int
    samples: int
    elapsed_s: float
    gate: str = "mean"
    batch_size: int | None = None
    model_was_training: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)
    noise_floor: float = math.nan
    sampling: str = "random"
    target_halfwidth: float | None = None
    #: Every check's per-sample errors (an :class:`eqaudit.report.compare.SampleErrors`) when the
    #: audit kept them (``audit(..., keep_samples=True)``), else None. Not part of :meth:`to_dict`
    #: (``eqaudit measure --save-samples`` writes them as ``samples_errors``) nor of equality.
    sample_errors: Any = field(default=None, compare=False, repr=False)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def errors(self) -> list[CheckResult]:
        """The checks that could not be measured."""
        return [c for c in self.checks if c.error is not None]

    @property
    def exit_code(self) -> int:
        """0 when every check passes, 1 when one exceeds its threshold (the CI gate), 2 when one
        could not be measured."""
        if self.errors:
            return 2
        return 0 if self.passed else 1

    def check(self, name: str) -> CheckResult:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    # -- JSON ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": "eqaudit",
            "version": __version__,
            "spec": self.spec,
            "checkpoint": self.checkpoint,
            "device": self.device,
            "seed": self.seed,
            "samples": self.samples,
            "elapsed_s": round(self.elapsed_s, 4),
            "passed": self.passed,
            "gate": self.gate,
            "batch_size": self.batch_size,
            "model_was_training": self.model_was_training,
            "notes": list(self.notes),
            "noise_floor": self.noise_floor if math.isfinite(self.noise_floor) else None,
            "sampling": self.sampling,
            "target_halfwidth": self.target_halfwidth,
            "checks": [c.to_dict() for c in self.checks],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Report:
        """The report that :meth:`to_dict` wrote (``from_dict(r.to_dict()).to_dict() == r.to_dict()``)."""
        noise = d.get("noise_floor")
        return cls(
            checks=tuple(CheckResult.from_dict(c) for c in d["checks"]),
            spec=d.get("spec"), checkpoint=d.get("checkpoint"), device=d["device"], seed=d["seed"],
            samples=d["samples"], elapsed_s=d["elapsed_s"], gate=d.get("gate", "mean"),
            batch_size=d.get("batch_size"), model_was_training=d.get("model_was_training", False),
            notes=tuple(d.get("notes", ())), noise_floor=math.nan if noise is None else noise,
            sampling=d.get("sampling", "random"), target_halfwidth=d.get("target_halfwidth"),
        )

    @classmethod
    def from_json(cls, text: str) -> Report:
        return cls.from_dict(json.loads(text))

    # -- renderings (eqaudit.report.render) ---------------------------------------------------------
    def to_junit(self) -> str:
        """JUnit XML: one ``<testcase>`` per check, a ``<failure>`` where it exceeds its threshold,
        an ``<error>`` where it could not be measured."""
        return render.junit(self)

    def to_markdown(self) -> str:
        """The table as GitHub-flavoured Markdown (for a CI job summary)."""
        return render.markdown(self)

    @property
    def confidence_label(self) -> str:
        return render.confidence_label(self)

    def footer(self) -> str:
        return render.footer(self)

    def rich_table(self, width: int | None = None, *, quantiles: bool = False) -> Any:
        """A :class:`rich.table.Table` with one row per check (see :func:`render.rich_table`)."""
        return render.rich_table(self, width, quantiles=quantiles)

    def layers_table(self) -> Any:
        """A table of per-layer errors (None when the spec asks for none)."""
        return render.layers_table(self)

    def elements_table(self) -> Any:
        """A second table: the error of every element of the ``group:`` checks (None without any)."""
        return render.elements_table(self)


def json_safe(d: Any) -> Any:
    """Non-finite floats (NaN, Inf) become null, at any depth: JSON has no spelling for them."""
    if isinstance(d, dict):
        return {k: json_safe(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [json_safe(v) for v in d]
    if isinstance(d, float) and not math.isfinite(d):
        return None
    return d
