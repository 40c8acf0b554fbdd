"""Audit results and their renderings: Rich table, JSON, JUnit XML and Markdown.

Nothing here prints; the CLI chooses where each rendering goes.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from .._version import __version__

GATES = ("mean", "upper")


@dataclass(frozen=True)
class CheckResult:
    """The estimate for one check. Field names are the JSON contract (add, never rename)."""

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
    penalty: float
    passed: bool
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

    @property
    def gated_value(self) -> float:
        """The figure compared with the threshold: the mean, or the upper confidence bound."""
        return self.ci_high if self.gate == "upper" else self.mean


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

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def exit_code(self) -> int:
        """0 when every check passes, 1 otherwise (the CI gate)."""
        return 0 if self.passed else 1

    def check(self, name: str) -> CheckResult:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    # -- renderings -----------------------------------------------------------------------------
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
            "checks": [_json_safe(asdict(c)) for c in self.checks],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def to_junit(self) -> str:
        """JUnit XML: one ``<testcase>`` per check, a ``<failure>`` where it exceeds its threshold."""
        failures = sum(not c.passed for c in self.checks)
        suite = quoteattr(f"eqaudit: {self.spec or 'audit'}")
        lines = [
            '<?xml version="1.0" encoding="UTF-8"?>',
            f'<testsuites name="eqaudit" tests="{len(self.checks)}" failures="{failures}" '
            f'errors="0" time="{self.elapsed_s:.3f}">',
            f'  <testsuite name={suite} tests="{len(self.checks)}" failures="{failures}" errors="0" '
            f'skipped="0" time="{self.elapsed_s:.3f}">',
        ]
        for c in self.checks:
            head = (
                f"    <testcase classname={quoteattr('eqaudit.' + (Path(self.spec).stem if self.spec else 'audit'))} "
                f"name={quoteattr(c.name)} time=\"0\">"
            )
            detail = (
                f"{c.name}: {c.gate} error {_g(c.gated_value)} exceeds threshold {_g(c.threshold)} "
                f"(mean {_g(c.mean)}, {c.confidence:.0%} CI [{_g(c.ci_low)}, {_g(c.ci_high)}], n={c.n}, "
                f"input {c.input}, output {c.output}, distance {c.distance})"
            )
            out = (
                f"      <system-out>{escape(f'mean={_g(c.mean)} ci=[{_g(c.ci_low)}, {_g(c.ci_high)}] n={c.n}')}"
                "</system-out>"
            )
            if c.passed:
                lines += [head, out, "    </testcase>"]
            else:
                lines += [
                    head,
                    f"      <failure message={quoteattr(detail)} type=\"EquivarianceError\">{escape(detail)}</failure>",
                    out,
                    "    </testcase>",
                ]
        lines += ["  </testsuite>", "</testsuites>", ""]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The table as GitHub-flavoured Markdown (for a CI job summary)."""
        status = "PASSED" if self.passed else "FAILED"
        head = f"### eqaudit: {status}" + (f" — `{self.spec}`" if self.spec else "")
        rows = [
            head,
            "",
            f"| check | input | output | distance | mean | {self.confidence_label} | threshold | status | penalty |",
            "|---|---|---|---|---:|---:|---:|:---:|---:|",
        ]
        for c in self.checks:
            mark = "✅ PASS" if c.passed else "❌ FAIL"
            rows.append(
                f"| {_md(c.name)} | `{_md(c.input)}` | `{_md(c.output)}` | {_distance_label(c)} | {_g(c.mean)} | "
                f"[{_g(c.ci_low)}, {_g(c.ci_high)}] | {_g(c.threshold)} | {mark} | {_g(c.penalty)} |"
            )
        rows += ["", self.footer(), ""]
        return "\n".join(rows)

    @property
    def confidence_label(self) -> str:
        conf = self.checks[0].confidence if self.checks else 0.95
        return f"{conf * 100:g}% CI"

    def footer(self) -> str:
        parts = [
            f"{self.samples} samples",
            f"device {self.device}",
            f"seed {self.seed}",
            f"gate {self.gate}",
            f"{self.elapsed_s:.2f} s",
        ]
        if math.isfinite(self.noise_floor):
            parts.insert(1, f"noise floor {_g(self.noise_floor)}")
        if self.checkpoint:
            parts.insert(0, f"checkpoint {self.checkpoint}")
        return " · ".join(parts)

    def rich_table(self, width: int | None = None, *, quantiles: bool = False) -> Any:
        """A :class:`rich.table.Table` with one row per check and a footer caption.

        Below 110 columns the transforms and distance move under the check's name, so the numbers
        keep one line each. ``quantiles=True`` adds p50, p95, p99 and max columns.
        """
        from rich.table import Table

        title = "eqaudit" + (f" — {self.spec}" if self.spec else "")
        if width is not None and width < 110:
            return self._compact_table(title, quantiles)
        from rich.markup import escape

        table = Table(title=title, caption=self.footer())
        for col, just, wrap in [
            ("check", "left", True),
            ("input", "left", True),
            ("output", "left", True),
            ("distance", "left", True),
            ("mean", "right", False),
            (self.confidence_label, "right", False),
            ("threshold", "right", False),
            ("status", "center", False),
            ("penalty", "right", False),
        ]:
            table.add_column(col, justify=just, overflow="fold", no_wrap=not wrap)
        _quantile_columns(table, quantiles)
        for c in self.checks:
            status = "[bold green]PASS[/]" if c.passed else "[bold red]FAIL[/]"
            table.add_row(
                escape(c.name),
                escape(c.input),
                escape(c.output),
                _distance_label(c),
                _g(c.mean),
                f"[{_g(c.ci_low)}, {_g(c.ci_high)}]",
                _g(c.threshold),
                status,
                _g(c.penalty),
                *_quantile_cells(c, quantiles),
            )
        return table

    def layers_table(self) -> Any:
        """A table of per-layer errors (None when the spec asks for none)."""
        from rich.markup import escape
        from rich.table import Table

        with_layers = [c for c in self.checks if c.layers]
        if not with_layers:
            return None
        table = Table(title="per-layer equivariance error (relative_l2 of feature maps)")
        for col, just in (("check", "left"), ("layer", "left"), ("mean", "right"), (self.confidence_label, "right"),
                          ("max", "right")):
            table.add_column(col, justify=just)
        for c in with_layers:
            for i, row in enumerate(c.layers or []):
                name = escape(c.name) if i == 0 else ""
                if "skipped" in row:
                    table.add_row(name, escape(row["name"]), "-", f"[dim]{escape(row['skipped'])}[/]", "-")
                else:
                    layer = escape(row["name"])
                    if "stride" in row:  # a shift divided by the map's stride, on the samples it divides
                        layer += f" [dim](stride {row['stride'][0]}x{row['stride'][1]}, n={row['n']})[/]"
                    table.add_row(name, layer, _g(row["mean"]),
                                  f"[{_g(row['ci_low'])}, {_g(row['ci_high'])}]", _g(row["max"]))
        return table

    def elements_table(self) -> Any:
        """A second table: the error of every element of the ``group:`` checks (None without any)."""
        from rich.markup import escape
        from rich.table import Table

        group_checks = [c for c in self.checks if c.elements]
        if not group_checks:
            return None
        table = Table(title="group elements")
        for col, just in (("check", "left"), ("element", "left"), ("mean", "right"), (self.confidence_label, "right"),
                          ("max", "right"), ("status", "center")):
            table.add_column(col, justify=just)
        for c in group_checks:
            for i, e in enumerate(c.elements or []):
                status = "[green]PASS[/]" if e["passed"] else "[red]FAIL[/]"
                table.add_row(escape(c.name) if i == 0 else "", escape(e["element"]), _g(_num(e["mean"])),
                              f"[{_g(_num(e['ci_low']))}, {_g(_num(e['ci_high']))}]", _g(_num(e["max"])), status)
        return table

    def _compact_table(self, title: str, quantiles: bool = False) -> Any:
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=title, caption=self.footer())
        table.add_column("check", overflow="fold")
        for col in ("mean", self.confidence_label, "threshold", "status", "penalty"):
            table.add_column(col, justify="center" if col == "status" else "right", no_wrap=True)
        _quantile_columns(table, quantiles)
        for c in self.checks:
            status = "[bold green]PASS[/]" if c.passed else "[bold red]FAIL[/]"
            what = f"{c.input} → {c.output}, {c.distance}"
            table.add_row(
                f"{escape(c.name)}\n[dim]{escape(what)}[/]",
                _g(c.mean),
                f"[{_g(c.ci_low)}, {_g(c.ci_high)}]",
                _g(c.threshold),
                status,
                _g(c.penalty),
                *_quantile_cells(c, quantiles),
            )
        return table


def _quantile_columns(table: Any, on: bool) -> None:
    if on:
        for name in ("p50", "p95", "p99", "max"):
            table.add_column(name, justify="right", no_wrap=True)


def _quantile_cells(c: CheckResult, on: bool) -> list[str]:
    return [_g(c.p50), _g(c.p95), _g(c.p99), _g(c.max)] if on else []


def _num(x: Any) -> float:
    return math.nan if x is None else float(x)


def _g(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    if x == 0:
        return "0"
    return f"{x:.4g}" if 1e-3 <= abs(x) < 1e5 else f"{x:.3e}"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _json_safe(d: Any) -> Any:
    """Non-finite floats (NaN, Inf) become null, at any depth: JSON has no spelling for them."""
    if isinstance(d, dict):
        return {k: _json_safe(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_json_safe(v) for v in d]
    if isinstance(d, float) and not math.isfinite(d):
        return None
    return d


def _distance_label(c: CheckResult) -> str:
    """The distance column: the distance, and the mask where the check has one."""
    return c.distance if c.mask == "none" else f"{c.distance} (mask: {c.mask})"
