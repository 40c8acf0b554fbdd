"""Comparison of audit reports: which checks match (the same spec), the change of each check's
mean against a reference with a confidence interval for the difference (paired when both sides
carry per-sample errors of the same points, Welch otherwise), and the regression decision.

A check *regresses* when the lower confidence bound of ``new - old`` exceeds ``tolerance * old``
(``tolerance`` 0: any significant increase). Intervals use the normal quantile, as every interval
of eqaudit does (:func:`eqaudit.engine.estimator.z_value`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..engine.estimator import z_value
from ..errors import EqauditError
from .model import CheckResult, Report, json_safe

#: How a difference's interval was computed.
INTERVALS = ("paired", "welch")
#: The fields of a check that must agree for two reports to be compared (besides its name).
SPEC_FIELDS = ("input", "output", "distance", "mask")


@dataclass(frozen=True)
class SampleErrors:
    """Per-sample errors of one run (``samples_errors`` in the JSON): float64 values in sample
    order per check (NaN: non-finite or not drawn), with what identifies the points."""

    seed: int
    samples: int
    points: str  # digest of the drawn points (see eqaudit.engine.kept.points_digest)
    checks: Mapping[str, Sequence[float]]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (NaN as null)."""
        return json_safe({"seed": self.seed, "samples": self.samples, "points": self.points,
                           "checks": {k: list(v) for k, v in self.checks.items()}})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> SampleErrors:
        """Read the JSON form; a malformed section is an error naming ``where`` (the file)."""
        try:
            checks = {str(k): [math.nan if v is None else float(v) for v in values]
                      for k, values in d["checks"].items()}
            return cls(int(d["seed"]), int(d["samples"]), str(d["points"]), checks)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise EqauditError(f"malformed 'samples_errors' section ({exc})", file=where,
                               hint="write it again with eqaudit measure --save-samples") from None

    def pairs_with(self, other: SampleErrors) -> bool:
        """Whether both runs evaluated the same points (same seed, sample count and draws)."""
        return (self.seed, self.samples, self.points) == (other.seed, other.samples, other.points)


@dataclass(frozen=True)
class Difference:
    """The change of one check's mean against the reference. Field names are the JSON contract."""

    check: str
    old: float
    new: float
    change: float
    ci_low: float
    ci_high: float
    confidence: float
    interval: str
    n: int  # pairs (paired) or the smaller sample count (welch)
    allowed: float  # tolerance * old: the increase a check may show before it regresses
    regressed: bool

    @property
    def relative(self) -> float:
        """``change / old`` (NaN when old is 0 or unknown)."""
        return self.change / self.old if self.old else math.nan

    def to_dict(self) -> dict[str, Any]:
        """The JSON fields (non-finite numbers as null)."""
        return json_safe({**self.__dict__, "relative": self.relative})


def welch_interval(old: CheckResult, new: CheckResult, confidence: float) -> tuple[float, float, float]:
    """``(change, low, high)`` of ``new.mean - old.mean`` for independent samples: the standard error
    ``sqrt(s_old^2/n_old + s_new^2/n_new)`` (Welch's, unpooled) times the normal quantile."""
    change = new.mean - old.mean
    if old.n < 2 or new.n < 2:
        return change, -math.inf, math.inf
    half = z_value(confidence) * math.sqrt(old.std ** 2 / old.n + new.std ** 2 / new.n)
    return change, change - half, change + half


def paired_interval(old: Sequence[float], new: Sequence[float], confidence: float) -> tuple[int, float, float, float]:
    """``(n, change, low, high)`` from the per-sample differences ``new[i] - old[i]`` over the
    samples where both are finite: their mean, plus or minus the normal quantile times
    ``std(d) / sqrt(n)``."""
    if len(old) != len(new):
        raise ValueError(f"{len(old)} and {len(new)} samples cannot be paired")
    d = [b - a for a, b in zip(old, new) if math.isfinite(a) and math.isfinite(b)]
    n = len(d)
    if n == 0:
        return 0, math.nan, math.nan, math.nan
    mean = math.fsum(d) / n
    if n < 2:
        return n, mean, -math.inf, math.inf
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in d) / (n - 1))
    half = z_value(confidence) * std / math.sqrt(n)
    return n, mean, mean - half, mean + half


def difference(old: CheckResult, new: CheckResult, tolerance: float, confidence: float,
               samples: tuple[Sequence[float], Sequence[float]] | None = None) -> Difference:
    """One check's :class:`Difference`: paired when ``samples`` (old's and new's per-sample errors)
    is given, Welch otherwise."""
    if samples is not None:
        n, change, low, high = paired_interval(samples[0], samples[1], confidence)
        kind = "paired"
    else:
        change, low, high = welch_interval(old, new, confidence)
        n, kind = min(old.n, new.n), "welch"
    allowed = tolerance * old.mean
    regressed = bool(math.isfinite(low) and low > allowed)
    return Difference(old.name, old.mean, new.mean, change, low, high, confidence, kind, n, allowed, regressed)


def spec_differences(reference: Report, other: Report) -> list[str]:
    """What keeps two reports from being compared: checks only one has, and checks whose
    transforms, distance or mask differ (empty when they are the same spec)."""
    ref = {c.name: c for c in reference.checks}
    oth = {c.name: c for c in other.checks}
    found = []
    if only := [n for n in ref if n not in oth]:
        found.append(f"checks only in the reference: {', '.join(only)}")
    if only := [n for n in oth if n not in ref]:
        found.append(f"checks only in this report: {', '.join(only)}")
    for name in (n for n in ref if n in oth):
        for key in SPEC_FIELDS:
            a, b = getattr(ref[name], key), getattr(oth[name], key)
            if a != b:
                found.append(f"check {name!r}: {key} {a!r} vs {b!r}")
    return found


def require_same_spec(reference: Report, other: Report, reference_file: str, other_file: str, key: str) -> None:
    """Refuse (exit 2) to compare reports of different specs, naming both files and what differs."""
    found = spec_differences(reference, other)
    if found:
        raise EqauditError(f"{other_file} is not a report of the same spec as {reference_file}: " + "; ".join(found),
                           key=key, hint="compare reports of the same checks, transforms and distances")


def parse_tolerance(text: str | None, flag: str) -> float | None:
    """``--fail-on-regression``: ``10%`` or ``0.1`` (a relative increase), or ``off`` (None)."""
    if text is None or text.strip().lower() == "off":
        return None
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(%?)\s*", text)
    if m is None:
        raise EqauditError(f"{flag} expects a relative increase such as 10% or 0.1, or 'off'; got {text!r}",
                           key=flag, hint="e.g. --fail-on-regression 10%")
    value = float(m.group(1)) / (100.0 if m.group(2) else 1.0)
    return value


@dataclass(frozen=True)
class Comparison:
    """Reports of one spec side by side: ``labels[0]`` is the reference; ``differences[k]`` holds
    report ``k + 1``'s change against it, per check in the reference's order."""

    labels: tuple[str, ...]
    reports: tuple[Report, ...]
    differences: tuple[tuple[Difference, ...], ...]
    tolerance: float
    gated: bool  # whether a regression fails the run (exit 1)
    notes: tuple[str, ...] = ()  # why a comparison that could have been paired is not

    @property
    def regressions(self) -> list[tuple[str, Difference]]:
        """``(label, difference)`` of every check that regressed."""
        return [(label, d) for label, diffs in zip(self.labels[1:], self.differences) for d in diffs if d.regressed]

    @property
    def exit_code(self) -> int:
        """1 when gated and some check regressed, else 0."""
        return 1 if self.gated and self.regressions else 0

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: the reference, the tolerance, and per compared report its differences."""
        return {
            "reference": self.labels[0],
            "tolerance": self.tolerance,
            "gated": self.gated,
            "regressed": bool(self.regressions),
            "notes": list(self.notes),
            "against": [{"label": label, "checks": [d.to_dict() for d in diffs]}
                        for label, diffs in zip(self.labels[1:], self.differences)],
        }


def compare_reports(reports: Sequence[Report], labels: Sequence[str], tolerance: float = 0.0, *, gated: bool = True,
                    samples: Sequence[SampleErrors | None] | None = None) -> Comparison:
    """Compare each report with the first (the same spec is assumed: see :func:`require_same_spec`).
    A check is paired when both reports' ``samples`` pair (same seed, count and points) and carry
    its errors; otherwise Welch."""
    if tolerance < 0 or not math.isfinite(tolerance):
        raise EqauditError(f"the allowed relative change must be >= 0, got {tolerance}", key="--fail-on-regression")
    samples = list(samples) if samples is not None else [None] * len(reports)
    ref, ref_samples = reports[0], samples[0]
    confidence = ref.checks[0].confidence if ref.checks else 0.95
    rows, notes = [], []
    for label, report, errs in zip(labels[1:], reports[1:], samples[1:]):
        pair = ref_samples is not None and errs is not None and ref_samples.pairs_with(errs)
        if not pair:
            notes.append(_unpaired(labels[0], label, ref_samples, errs))
        diffs = []
        for old in ref.checks:
            new = report.check(old.name)
            both = pair and old.name in ref_samples.checks and old.name in errs.checks  # type: ignore[union-attr]
            values = (ref_samples.checks[old.name], errs.checks[old.name]) if both else None  # type: ignore[union-attr]
            diffs.append(difference(old, new, tolerance, confidence, values))
        rows.append(tuple(diffs))
    return Comparison(tuple(labels), tuple(reports), tuple(rows), tolerance, gated, tuple(notes))


def _unpaired(ref_label: str, label: str, ref: SampleErrors | None, other: SampleErrors | None) -> str:
    """Why ``label`` is compared with Welch intervals although one side has per-sample errors."""
    if ref is None or other is None:
        missing = ref_label if ref is None else label
        why = f"{missing} carries no per-sample errors (write it with --save-samples)"
    else:
        why = "; ".join(f"{what} {a} vs {b}" for what, a, b in (("seed", ref.seed, other.seed),
                        ("samples", ref.samples, other.samples), ("points", ref.points, other.points)) if a != b)
    return f"{label} against {ref_label}: Welch intervals, not paired: {why}"


@dataclass(frozen=True)
class ReadReport:
    """One report read from a file (a multi-checkpoint report gives one per checkpoint)."""

    label: str
    report: Report
    samples: SampleErrors | None


def read_reports(path: str, key: str) -> list[ReadReport]:
    """The reports in an eqaudit JSON file: one, or one per checkpoint of a multi-checkpoint run
    (labelled ``FILE[CHECKPOINT]``). A file that is not one is an error naming it and ``key``."""
    import json
    from pathlib import Path

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EqauditError("report file not found", file=path, key=key, hint="check the path") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise EqauditError(f"cannot read an eqaudit JSON report: {exc}", file=path, key=key,
                           hint="give a file written by eqaudit measure --json") from None
    if not isinstance(data, dict) or data.get("tool") != "eqaudit":
        raise EqauditError("not an eqaudit JSON report (no \"tool\": \"eqaudit\")", file=path, key=key,
                           hint="give a file written by eqaudit measure --json")
    sections = data["checkpoints"] if isinstance(data.get("checkpoints"), list) else None
    if sections is None:
        return [_read_section(data, path, path, key)]
    return [_read_section(s, f"{path}[{s.get('checkpoint') if isinstance(s, dict) else i}]", path, key)
            for i, s in enumerate(sections)]


def _read_section(d: Any, label: str, path: str, key: str) -> ReadReport:
    try:
        report = Report.from_dict(d)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise EqauditError(f"malformed eqaudit report ({type(exc).__name__}: {exc})", file=path, key=key,
                           hint="give a file written by eqaudit measure --json") from None
    raw = d.get("samples_errors")
    samples = SampleErrors.from_dict(raw, path) if raw is not None else None
    return ReadReport(label, report, samples)
