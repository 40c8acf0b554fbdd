"""The report's renderings: Rich tables, JUnit XML and Markdown. Nothing here prints; the CLI
chooses where each rendering goes. A check that could not be measured shows as ERROR."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr


def junit(report: Any) -> str:
    """JUnit XML: one ``<testcase>`` per check, a ``<failure>`` where it exceeds its threshold,
    an ``<error>`` where it could not be measured."""
    errors = sum(c.error is not None for c in report.checks)
    failures = sum(not c.passed for c in report.checks) - errors
    suite = quoteattr(f"eqaudit: {report.spec or 'audit'}")
    counts = f'tests="{len(report.checks)}" failures="{failures}" errors="{errors}"'
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<testsuites name="eqaudit" {counts} time="{report.elapsed_s:.3f}">',
        f'  <testsuite name={suite} {counts} skipped="0" time="{report.elapsed_s:.3f}">',
    ]
    classname = quoteattr("eqaudit." + (Path(report.spec).stem if report.spec else "audit"))
    for c in report.checks:
        lines.append(f"    <testcase classname={classname} name={quoteattr(c.name)} time=\"0\">")
        if c.error is not None:
            lines.append(f"      <error message={quoteattr(c.error)} type=\"EqauditError\">{escape(c.error)}</error>")
        elif not c.passed:
            detail = (
                f"{c.name}: {c.gate} error {format_number(c.gated_value)} "
                f"exceeds threshold {format_number(c.threshold)} "
                f"(mean {format_number(c.mean)}, {c.confidence:.0%} CI {_interval(c.ci_low, c.ci_high)}, n={c.n}, "
                f"input {c.input}, output {c.output}, distance {c.distance})"
            )
            lines.append(f"      <failure message={quoteattr(detail)} type=\"EquivarianceError\">"
                         f"{escape(detail)}</failure>")
        figures = f"mean={format_number(c.mean)} ci={_interval(c.ci_low, c.ci_high)} n={c.n}"
        lines += [f"      <system-out>{escape(figures)}</system-out>", "    </testcase>"]
    lines += ["  </testsuite>", "</testsuites>", ""]
    return "\n".join(lines)


def markdown(report: Any) -> str:
    """The table as GitHub-flavoured Markdown (for a CI job summary)."""
    status = "ERROR" if report.errors else ("PASSED" if report.passed else "FAILED")
    head = f"### eqaudit: {status}" + (f" — `{report.spec}`" if report.spec else "")
    rows = [
        head,
        "",
        f"| check | input | output | distance | mean | {confidence_label(report)} | threshold | status | penalty |",
        "|---|---|---|---|---:|---:|---:|:---:|---:|",
    ]
    for c in report.checks:
        mark = "⚠️ ERROR" if c.error is not None else ("✅ PASS" if c.passed else "❌ FAIL")
        rows.append(
            f"| {_md(c.name)} | `{_md(c.input)}` | `{_md(c.output)}` | {_distance_label(c)} | "
            f"{format_number(c.mean)} | "
            f"{_interval(c.ci_low, c.ci_high)} | {format_number(c.threshold)} | {mark} | {format_number(c.penalty)} |"
        )
    rows += [f"\n**{_md(c.name)}**: {_md(c.error)}" for c in report.errors]
    rows += ["", footer(report), ""]
    return "\n".join(rows)

def confidence_label(report: Any) -> str:
    conf = report.checks[0].confidence if report.checks else 0.95
    return f"{conf * 100:g}% CI"

def footer(report: Any) -> str:
    parts = [
        f"{report.samples} samples",
        f"device {report.device}",
        f"seed {report.seed}",
        f"gate {report.gate}",
        f"{report.elapsed_s:.2f} s",
    ]
    if math.isfinite(report.noise_floor):
        parts.insert(1, f"noise floor {format_number(report.noise_floor)}")
    if report.checkpoint:
        parts.insert(0, f"checkpoint {report.checkpoint}")
    return " · ".join(parts)

def rich_table(report: Any, width: int | None = None, *, quantiles: bool = False,
               shared: frozenset[str] | set[str] = frozenset()) -> Any:
    """A :class:`rich.table.Table` with one row per check and a footer caption.

    The richest layout that fits ``width`` columns is chosen (numbers are never cut): the wide
    one (from 110 columns); then the transforms and distance under the check's name; then the
    quantiles (``quantiles=True``: p50, p95, p99, max) stacked in one column; then the interval
    under the mean; then without the penalty column (it follows from the mean and ``epsilon``).
    ``shared``: the checks whose two sides share one draw (``both:``), shown as ``both: <transform>``.
    """
    title = "eqaudit" + (f" — {report.spec}" if report.spec else "")
    layouts = [] if width is not None and width < 110 else [_wide_table(report, title, quantiles, shared)]
    layouts += [_compact_table(report, title, quantiles, stack, shared) for stack in range(4 if quantiles else 3)
                if quantiles or stack != 1]
    if width is None:
        return layouts[0]
    names = [c.name[:8] for c in report.checks]
    return next((t for t in layouts if _fits(t, width, names)), layouts[-1])


def _fits(table: Any, width: int, names: list[str]) -> bool:
    """Whether ``table`` rendered in ``width`` columns shows every cell whole (no ``…``, no line
    longer than the width, the check names not squeezed out)."""
    import io

    from rich.console import Console

    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    console.print(table, crop=False)
    text = console.export_text()
    fitting = "…" not in text and all(len(line) <= width for line in text.splitlines())
    return fitting and all(name in text for name in names)


def _wide_table(report: Any, title: str, quantiles: bool, shared: Any = frozenset()) -> Any:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, caption=footer(report))
    for col, just, wrap in [
        ("check", "left", True),
        ("input", "left", True),
        ("output", "left", True),
        ("distance", "left", True),
        ("mean", "right", False),
        (confidence_label(report), "right", False),
        ("threshold", "right", False),
        ("status", "center", False),
        ("penalty", "right", False),
    ]:  # the text columns keep a readable width: when they cannot, a compact layout is chosen
        table.add_column(col, justify=just, overflow="fold", no_wrap=not wrap, min_width=12 if wrap else None)
    _quantile_columns(table, quantiles)
    for c in report.checks:
        table.add_row(escape(c.name), *(escape(t) for t in _sides(c, shared)), _distance_label(c),
                      format_number(c.mean),
                      _rich_interval(c.ci_low, c.ci_high), format_number(c.threshold), _status(c),
                      format_number(c.penalty), *_quantile_cells(c, quantiles))
    return table


def layers_table(report: Any) -> Any:
    """A table of per-layer errors (None when the spec asks for none)."""
    from rich.markup import escape

    with_layers = [c for c in report.checks if c.layers]
    if not with_layers:
        return None
    table = _detail_table(report, "per-layer equivariance error (relative_l2 of feature maps)", "layer")
    for c in with_layers:
        for i, row in enumerate(c.layers or []):
            name = escape(c.name) if i == 0 else ""
            if "skipped" in row:
                table.add_row(name, escape(row["name"]), "-", f"[dim]{escape(row['skipped'])}[/]", "-")
            else:
                layer = escape(row["name"])
                if "stride" in row:  # a shift divided by the map's stride, on the samples it divides
                    layer += f" [dim](stride {row['stride'][0]}x{row['stride'][1]}, n={row['n']})[/]"
                table.add_row(name, layer, format_number(row["mean"]),
                              _rich_interval(row['ci_low'], row['ci_high']), format_number(row["max"]))
    return table


def elements_table(report: Any) -> Any:
    """A second table: the error of every element of the ``group:`` checks (None without any)."""
    from rich.markup import escape

    group_checks = [c for c in report.checks if c.elements]
    if not group_checks:
        return None
    table = _detail_table(report, "group elements", "element", status=True)
    for c in group_checks:
        for i, e in enumerate(c.elements or []):
            status = "[green]PASS[/]" if e["passed"] else "[red]FAIL[/]"
            table.add_row(escape(c.name) if i == 0 else "", escape(e["element"]), format_number(_num(e["mean"])),
                          _rich_interval(_num(e['ci_low']), _num(e['ci_high'])), format_number(_num(e["max"])), status)
    return table


def _detail_table(report: Any, title: str, what: str, *, status: bool = False) -> Any:
    """The columns of a per-layer or per-element table: check, ``what``, mean, CI, max (and status)."""
    from rich.table import Table

    table = Table(title=title)
    columns = [("check", "left"), (what, "left"), ("mean", "right"), (confidence_label(report), "right"),
               ("max", "right")] + ([("status", "center")] if status else [])
    for col, just in columns:
        table.add_column(col, justify=just)
    return table


def _compact_table(report: Any, title: str, quantiles: bool = False, stack: int = 0,
                   shared: Any = frozenset()) -> Any:
    """The transforms under the check's name; ``stack`` >= 1: the quantiles in one column, >= 2:
    the interval under the mean, 3: no penalty column."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, caption=footer(report))
    table.add_column("check", overflow="fold", min_width=12)
    ci = confidence_label(report)
    columns = ["mean", ci] if stack < 2 else [f"mean\n{ci}"]
    columns += ["threshold", "status"] + (["penalty"] if stack < 3 else [])
    for col in columns:
        table.add_column(col, justify="center" if col == "status" else "right", no_wrap=True)
    if stack == 0:
        _quantile_columns(table, quantiles)
    elif quantiles:
        table.add_column("quantiles", justify="right", no_wrap=True)
    for c in report.checks:
        sides = _sides(c, shared)
        what = (f"{sides[0]}, " if c.name in shared else f"{sides[0]} → {sides[1]}, ") + _distance_label(c)
        numbers = [format_number(c.mean), _rich_interval(c.ci_low, c.ci_high)]
        cells = numbers if stack < 2 else ["\n".join(numbers)]
        cells += [format_number(c.threshold), _status(c)] + ([format_number(c.penalty)] if stack < 3 else [])
        if stack == 0:
            cells += _quantile_cells(c, quantiles)
        elif quantiles:
            cells.append("\n".join(f"{q} {v}" for q, v in zip(("p50", "p95", "p99", "max"), _quantile_cells(c, True))))
        table.add_row(f"{escape(c.name)}\n[dim]{escape(what)}[/]", *cells)
    return table


def _sides(c: Any, shared: Any) -> tuple[str, str]:
    """The input and output cells: ``both: t`` and ``(same draw)`` for a shared draw."""
    return (f"both: {c.input}", "(same draw)") if c.name in shared else (c.input, c.output)


def _rich_interval(low: Any, high: Any) -> str:
    """:func:`_interval` for a Rich cell: escaped, so that ``[nan, nan]`` or ``[inf, ...]`` is not
    read as a markup tag and printed as an empty cell."""
    from rich.markup import escape

    return escape(_interval(low, high))


def _interval(low: Any, high: Any) -> str:
    return f"[{format_number(low)}, {format_number(high)}]"


def _status(c: Any) -> str:
    if c.error is not None:
        return "[bold yellow]ERROR[/]"
    return "[bold green]PASS[/]" if c.passed else "[bold red]FAIL[/]"


def _quantile_columns(table: Any, on: bool) -> None:
    if on:
        for name in ("p50", "p95", "p99", "max"):
            table.add_column(name, justify="right", no_wrap=True)


def _quantile_cells(c: Any, on: bool) -> list[str]:
    return [format_number(c.p50), format_number(c.p95), format_number(c.p99), format_number(c.max)] if on else []


def _num(x: Any) -> float:
    return math.nan if x is None else float(x)


def format_number(x: float | None) -> str:
    """A number as the tables show it: 4 significant digits, ``nan`` for NaN or None."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    if x == 0:
        return "0"
    return f"{x:.4g}" if 1e-3 <= abs(x) < 1e5 else f"{x:.3e}"


def exceeded(names: list[str]) -> str:
    """``a exceeds its threshold`` / ``a, b exceed their thresholds``."""
    return ", ".join(names) + (" exceeds its threshold" if len(names) == 1 else " exceed their thresholds")


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _distance_label(c: Any) -> str:
    """The distance column: the distance, and the mask where the check has one."""
    return c.distance if c.mask == "none" else f"{c.distance} (mask: {c.mask})"
