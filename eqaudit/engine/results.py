"""From the audit's statistics to the report's rows: each check's :class:`CheckResult` (its
group elements and layers), the refusals of estimates that cannot stand (non-finite errors, no
samples drawn), and the report's notes."""

from __future__ import annotations

import math
from typing import Any

from ..report import CheckResult, gated_value, within
from ..spec import Spec
from .chunk import element_columns, worst_of_columns
from .estimator import Summary
from .worst_of import report_entry


def exceeds(summary: Summary, gate: str, threshold: float) -> bool:
    """Whether the gated figure of ``summary`` exceeds ``threshold`` (see :func:`eqaudit.report.within`)."""
    return gated_value(gate, summary.mean, summary.ci_high) > threshold


def refuse_unusable(spec: Spec, j: int, s: Summary) -> None:
    """Raise at check ``j``'s key when its estimate is not a number the report can stand behind."""
    check = spec.checks[j]
    if s.nonfinite:
        name = check.distance.name
        undefined = name == "cross_entropy" or (":" in name and not name.startswith("lp:"))  # or user code
        raise spec.error(
            f"checks[{j}]",
            f"check '{check.name}': the error is not finite (NaN or Inf) on {s.nonfinite} of "
            f"{s.nonfinite + s.n} samples: the model's outputs are not finite there"
            + (f", or distance '{name}' is undefined on them (e.g. the log of a zero probability)"
               if undefined else ""),
            "check the input bounds and dtype, or the model" + (", or use another distance" if undefined else ""),
        )
    if s.n == 0:
        raise spec.error(
            "num_funcs" if spec.num_funcs is not None else f"checks[{j}]",
            f"check '{check.name}' drew no samples"
            + (f" (num_funcs: {spec.num_funcs} of {len(spec.checks)} checks per sample, {spec.samples} samples)"
               if spec.num_funcs is not None else ""),
            "raise samples so that every check is measured",
        )


def reported_summary(spec: Spec, j: int, s: Summary) -> Summary:
    """Check ``j``'s summary with the interval it is reported with: the Wilson score interval for
    a flip distance whose errors are all 0 or 1 (a proportion), the normal one otherwise."""
    if spec.checks[j].distance.indicator and s.binary:
        return s.as_proportion()
    return s


def check_result(spec: Spec, j: int, s: Summary, summaries: list[Summary], *, gate: str, noise_floor: float,
                 hint: str | None, layers: list[dict[str, Any]] | None) -> CheckResult:
    """Check ``j``'s row of the report from its summary ``s`` (its figures, at the summary's
    confidence; ``summaries``: every column)."""
    check = spec.checks[j]
    s = reported_summary(spec, j, s)
    return CheckResult(
        name=check.name, input=check.input_text, output=check.output_text, distance=check.distance.name,
        **s.figures(), epsilon=check.epsilon, threshold=check.threshold, weight=check.weight, gate=gate,
        threshold_source=check.threshold_source,
        noise_floor=noise_floor, hint=hint, elements=element_results(spec, j, summaries, gate), layers=layers,
        mask=check.mask, worst_of=worst_of_entry(spec, j, summaries),
    )


def worst_of_entry(spec: Spec, j: int, summaries: list[Summary]) -> dict[str, Any] | None:
    """The report's ``worst_of`` entry of check ``j`` (None when it is not a worst-of check)."""
    if spec.checks[j].worst_of is None:
        return None
    return report_entry(spec.checks[j], summaries, worst_of_columns(spec)[j])


def error_result(spec: Spec, j: int, message: str, *, confidence: float, gate: str) -> CheckResult:
    """The row of check ``j``, which could not be measured: its error, no figures."""
    check = spec.checks[j]
    return CheckResult(
        name=check.name, input=check.input_text, output=check.output_text, distance=check.distance.name,
        **Summary.empty(confidence).figures(), epsilon=check.epsilon, threshold=check.threshold,
        weight=check.weight, gate=gate, mask=check.mask, error=message, threshold_source=check.threshold_source,
    )


def element_results(spec: Spec, j: int, summaries: list[Summary], gate: str) -> list[dict[str, Any]] | None:
    """Per-element figures of a ``group:`` check (JSON-safe: non-finite numbers become None)."""
    check = spec.checks[j]
    if check.group is None:
        return None
    first = element_columns(spec)[j]
    out = []
    for e, name in enumerate(check.group.element_names()):
        s = summaries[first + e]
        row: dict[str, Any] = {"element": name}
        for key in ("n", "mean", "std", "stderr", "ci_low", "ci_high", "max", "p50", "p95", "p99"):
            v = getattr(s, key)
            row[key] = v if not isinstance(v, float) or math.isfinite(v) else None
        row["passed"] = within(gate, s.mean, s.ci_high, check.threshold)
        out.append(row)
    return out


def run_notes(spec: Spec, results: list[CheckResult], *, world_size: int, precision_text: str | None,
              target: float | None, hints: dict[int, str], was_training: bool) -> list[str]:
    """The report's notes about how the figures were obtained."""
    notes = []
    if world_size > 1:
        notes.append(f"samples split across {world_size} processes")
    if precision_text is not None:
        notes.append(f"forward passes under {precision_text} autocast; distances in float64")
    if spec.input.sampling == "sobol":
        notes.append("points are scrambled Sobol (quasi-Monte Carlo); the confidence intervals assume "
                     "independent samples, so they are conservative")
    if target is not None:
        worst = max(((r.ci_high - r.ci_low) / 2 for r in results if r.error is None), default=math.nan)
        reached = "reached" if worst <= target else f"NOT reached (sample cap {spec.samples})"
        notes.append(f"target half-width {target:g}: {spec.samples} samples, largest half-width {worst:.3g}: {reached}")
    for check in spec.checks:
        if check.group is not None and not check.group.exact:
            notes.append(f"check '{check.name}': {check.group.label} rotates by angles that are not multiples of 90 "
                         "degrees with bilinear interpolation, so the group action is inexact (even an invariant "
                         "model shows an error)")
    for j, text in sorted(hints.items()):
        notes.append(f"check '{spec.checks[j].name}': {text}")
    if was_training:
        notes.append("the model was in training mode; it was evaluated in eval mode (dropout off, batch norm frozen)")
    return notes


def max_finite(values: list[float] | None) -> float:
    """The largest finite value (NaN when there is none)."""
    finite = [v for v in values or [] if math.isfinite(v)]
    return max(finite) if finite else math.nan
