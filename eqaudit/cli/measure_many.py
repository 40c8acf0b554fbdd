"""``eqaudit measure`` beyond one plain audit: the per-sample errors of a run (for paired
differences and ``--save-samples``), several checkpoints audited on the same points with their
paired differences against the first, and the comparison with a ``--baseline`` report.

The per-sample errors are those the audit itself kept (``audit(..., keep_samples=True)``, see
:mod:`eqaudit.engine.kept`): exactly the errors folded into its estimates, with no second pass
over the model. The run keeps them only when they are saved or can pair with the baseline.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..report.compare import (Comparison, ReadReport, SampleErrors, compare_reports, parse_tolerance, read_reports,
                              require_same_spec)

#: Builds one checkpoint's report: ``run(checkpoint, keep_samples) -> Report`` (the audit with the
#: CLI's options; ``keep_samples``: keep the per-sample errors on ``report.sample_errors``).
Runner = Callable[[Any, bool], Any]


def report_dict(report: Any, samples: SampleErrors | None) -> dict[str, Any]:
    """The report's JSON form, with ``samples_errors`` when they were kept."""
    d = report.to_dict()
    if samples is not None:
        d["samples_errors"] = samples.to_dict()
    return d


def measure_checkpoints(checkpoints: Sequence[Path | None], run: Runner, *,
                        tolerance: str | None) -> tuple[list[Any], list[SampleErrors], Comparison]:
    """Audit each checkpoint on the same points, keeping its per-sample errors, then compare each
    with the first (paired)."""
    reports = [run(checkpoint, True) for checkpoint in checkpoints]
    samples = [r.sample_errors for r in reports]
    allowed = parse_tolerance(tolerance, "--fail-on-regression")
    labels = [r.checkpoint or f"checkpoint {i + 1}" for i, r in enumerate(reports)]
    comparison = compare_reports(reports, labels, allowed or 0.0, gated=allowed is not None, samples=samples)
    return reports, samples, comparison


def many_dict(spec_file: str | None, reports: Sequence[Any], samples: Sequence[SampleErrors], keep: bool,
              comparison: Comparison) -> dict[str, Any]:
    """The JSON report of a multi-checkpoint run: one section per checkpoint (the single-run
    report), and the paired comparison against the first."""
    from .._version import __version__

    return {
        "tool": "eqaudit",
        "version": __version__,
        "spec": spec_file,
        "seed": reports[0].seed,
        "samples": reports[0].samples,
        "passed": all(r.passed for r in reports) and not comparison.exit_code,
        "exit_code": exit_code([r.exit_code for r in reports] + [comparison.exit_code]),
        "checkpoints": [report_dict(r, s if keep else None) for r, s in zip(reports, samples)],
        "comparison": comparison.to_dict(),
    }


def exit_code(codes: Sequence[int]) -> int:
    """The worst of several exit codes (2 > 1 > 0)."""
    return max(codes, default=0)


@dataclass(frozen=True)
class Baseline:
    """The ``--baseline`` file and its one report, read once before the run."""

    path: Path
    read: ReadReport

    @property
    def samples(self) -> SampleErrors | None:
        """Its per-sample errors, when it carries them."""
        return self.read.samples


def read_baseline(path: Path | None) -> Baseline | None:
    """The ``--baseline`` report file read before the run: exit 2 naming it when it is not a
    report, or holds several checkpoints' reports. None without one."""
    from ..errors import EqauditError

    if path is None:
        return None
    found = read_reports(str(path), "--baseline")
    if len(found) != 1:
        raise EqauditError(f"holds {len(found)} checkpoints' reports; --baseline takes a single-checkpoint report",
                           file=str(path), key="--baseline", hint="write the baseline with one checkpoint")
    return Baseline(path, found[0])


def baseline_comparison(baseline: Baseline, report: Any, samples: SampleErrors | None,
                        tolerance: str | None) -> Comparison:
    """The run's report against the ``--baseline`` report (same spec, or exit 2 naming the file).
    Paired when both carry per-sample errors of the same points, Welch otherwise."""
    path, base = str(baseline.path), baseline.read
    require_same_spec(base.report, report, path, "this run", "--baseline")
    allowed = 0.0 if tolerance is None else parse_tolerance(tolerance, "--fail-on-regression")
    return compare_reports([base.report, report], [path, report.checkpoint or "this run"],
                           allowed or 0.0, gated=allowed is not None, samples=[base.samples, samples])


def wants_samples(baseline: Baseline | None, report: Any) -> bool:
    """Whether the baseline could pair with this run: it carries per-sample errors of the same
    seed and sample count (the points themselves are compared by digest afterwards)."""
    s = baseline.samples if baseline is not None else None
    return s is not None and (s.seed, s.samples) == (report.seed, report.samples)


def baseline_section(path: Path, comparison: Comparison) -> dict[str, Any]:
    """The ``baseline`` section of the JSON report."""
    return {
        "file": str(path),
        "checkpoint": comparison.reports[0].checkpoint,
        "seed": comparison.reports[0].seed,
        "samples": comparison.reports[0].samples,
        "tolerance": comparison.tolerance,
        "gated": comparison.gated,
        "regressed": bool(comparison.regressions),
        "checks": [d.to_dict() for d in comparison.differences[0]],
    }


@dataclass(frozen=True)
class Outputs:
    """Where the run's results go, and the options that shape them."""

    json_path: str | None
    junit: Path | None
    markdown: Path | None
    quiet: bool  # no tables (``-q``, or the JSON on stdout)
    save_samples: bool
    tolerance: str | None  # --fail-on-regression as given

    @property
    def saves_samples(self) -> bool:
        """Whether the per-sample errors go into the JSON report (``--save-samples`` with ``--json``)."""
        return self.save_samples and self.json_path is not None


def keeps_samples(outputs: Outputs, baseline: Baseline | None) -> bool:
    """Whether a one-checkpoint run keeps its per-sample errors (asked before the run): they are
    saved (``--save-samples`` with ``--json``), or the baseline carries some to pair with."""
    return outputs.saves_samples or (baseline is not None and baseline.samples is not None)


def with_baseline(report: Any, baseline: Baseline | None,
                  outputs: Outputs) -> tuple[SampleErrors | None, Comparison | None]:
    """The run's per-sample errors (when saved, or when the baseline can pair with them: kept by
    the audit, see :func:`keeps_samples`) and its comparison with the baseline (None without one)."""
    kept = report.sample_errors if outputs.saves_samples or wants_samples(baseline, report) else None
    if baseline is None:
        return kept, None
    return kept, baseline_comparison(baseline, report, kept, outputs.tolerance)


def write_single(report: Any, kept: SampleErrors | None, baseline: Baseline | None, comparison: Comparison | None,
                 outputs: Outputs) -> None:
    """The report files of a one-checkpoint run (the plain report unchanged without the new options)."""
    from ..report import compare_render
    from .output import emit

    if outputs.save_samples or comparison is not None:
        d = report_dict(report, kept if outputs.save_samples else None)
        if comparison is not None and baseline is not None:
            d["baseline"] = baseline_section(baseline.path, comparison)
        emit(outputs.json_path, "--json", json.dumps(d, indent=2, allow_nan=False) + "\n")
    else:
        emit(outputs.json_path, "--json", report.to_json() + "\n")
    emit(outputs.junit, "--junit", report.to_junit())
    extra = "\n" + compare_render.markdown(comparison) if comparison is not None else ""
    emit(outputs.markdown, "--markdown", report.to_markdown() + extra)


def print_comparison(comparison: Comparison | None) -> None:
    """The comparison table on stdout, the regressions and the unpaired notes on stderr."""
    from ..report import compare_render
    from .output import err, escape, note, out

    if comparison is None:
        return
    out.print(compare_render.rich_table(comparison))
    for text in comparison.notes:
        note(text)
    if comparison.regressions:
        names = ", ".join(f"{d.check} ({label})" for label, d in comparison.regressions)
        word = "REGRESSED" if comparison.gated else "regressed (not gated)"
        err.print(f"[bold red]{word}[/]: {escape(names)}")


def measure_several(spec: Any, paths: Sequence[Path | None], run: Runner, outputs: Outputs) -> int:
    """Audit several checkpoints on the same points, write one report and print one table;
    the exit code is the worst over the checkpoints (and the regression gate, when asked)."""
    from ..engine.distributed import current_world
    from ..report import compare_render, render
    from .output import emit, err, escape, fail

    reports, samples, comparison = measure_checkpoints(paths, run, tolerance=outputs.tolerance)
    d = many_dict(spec.file, reports, samples, outputs.save_samples, comparison)
    if current_world().is_main:
        emit(outputs.json_path, "--json", json.dumps(d, indent=2, allow_nan=False) + "\n")
        emit(outputs.junit, "--junit", _junit_many(reports, comparison.labels))
        emit(outputs.markdown, "--markdown", compare_render.markdown(comparison))
        if not outputs.quiet:
            print_comparison(comparison)
            for label, r in zip(comparison.labels, reports):
                failed = [c.name for c in r.checks if not c.passed and c.error is None]
                if failed:
                    err.print(f"[bold red]FAILED[/] ({escape(label)}): {escape(render.exceeded(failed))}")
        for label, r in zip(comparison.labels, reports):
            for check in r.errors:
                fail(escape(f"{label}: {check.error}"))
    return d["exit_code"]


def _junit_many(reports: Sequence[Any], labels: Sequence[str]) -> str:
    """One JUnit file for several checkpoints: each report's suites, the test names prefixed."""
    import dataclasses

    from ..report import Report

    checks = tuple(dataclasses.replace(c, name=f"{label}: {c.name}") for label, r in zip(labels, reports)
                   for c in r.checks)
    return Report.to_junit(dataclasses.replace(reports[0], checks=checks))
