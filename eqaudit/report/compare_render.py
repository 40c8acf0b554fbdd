"""Renderings of a :class:`eqaudit.report.compare.Comparison`: a Rich table and Markdown with one
column group per report (the first is the reference): its mean, and for the others the change
against the reference with its confidence interval and the verdict. Nothing here prints."""

from __future__ import annotations

from typing import Any

from .compare import Comparison, Difference
from .render import _interval, _md, _rich_interval, confidence_label, format_number


def change_text(d: Difference) -> str:
    """``+0.0123 [0.0101, 0.0145] (+12%, paired)``: the change, its interval, the relative change."""
    sign = "+" if d.change > 0 else ""
    rel = f"{d.relative * 100:+.3g}%, " if d.relative == d.relative else ""
    return f"{sign}{format_number(d.change)} {_interval(d.ci_low, d.ci_high)} ({rel}{d.interval})"


def verdict(d: Difference) -> str:
    """``regressed``, ``improved`` (the interval lies below 0), ``same`` (no significant change), or
    ``n/a`` (a side could not be measured)."""
    if d.change != d.change:  # NaN: a check with an error row on either side
        return "n/a"
    if d.regressed:
        return "regressed"
    if d.ci_high < 0:
        return "improved"
    return "same"


_RICH = {"regressed": "[bold red]REGRESSED[/]", "improved": "[green]improved[/]", "same": "[dim]same[/]",
         "n/a": "[yellow]n/a[/]"}
_MD = {"regressed": "❌ regressed", "improved": "✅ improved", "same": "➖ same", "n/a": "⚠️ n/a"}


def _title(comparison: Comparison) -> str:
    limit = f"> {comparison.tolerance:.3g} x reference" if comparison.tolerance else "any significant increase"
    return f"change against {comparison.labels[0]} ({confidence_label(comparison.reports[0])}; regression: {limit})"


def rich_table(comparison: Comparison) -> Any:
    """One row per check and compared report: the reference's mean, the report's mean, the change
    with its interval (and which interval), and the verdict. A mean over its threshold says FAIL."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(_title(comparison)))
    several = len(comparison.labels) > 2
    table.add_column("check", overflow="fold", min_width=6)
    table.add_column(escape(comparison.labels[0]), justify="right", overflow="fold", min_width=8)
    if several:
        table.add_column("against", overflow="fold", min_width=8)
    table.add_column("mean" if several else escape(comparison.labels[1]), justify="right", overflow="fold",
                     min_width=8)
    table.add_column("change", justify="right", no_wrap=True)
    table.add_column("CI", justify="right", overflow="fold")
    table.add_column("", justify="center", no_wrap=True)
    for i, ref in enumerate(comparison.reports[0].checks):
        for k, (label, diffs) in enumerate(zip(comparison.labels[1:], comparison.differences)):
            d, new = diffs[i], comparison.reports[k + 1].check(ref.name)
            cells = [escape(ref.name) if k == 0 else "", _mean_cell(ref) if k == 0 else ""]
            cells += [escape(label)] if several else []
            sign = "+" if d.change > 0 else ""
            cells += [_mean_cell(new), f"{sign}{format_number(d.change)}",
                      f"{_rich_interval(d.ci_low, d.ci_high)} {d.interval}", _RICH[verdict(d)]]
            table.add_row(*cells)
    return table


def _mean_cell(check: Any) -> str:
    """The mean, marked when the check exceeds its threshold or could not be measured."""
    if check.error is not None:
        return "[bold yellow]ERROR[/]"
    return format_number(check.mean) + ("" if check.passed else " [red]FAIL[/]")


def markdown(comparison: Comparison) -> str:
    """The comparison as GitHub-flavoured Markdown (a PR comment or job summary)."""
    status = "REGRESSED" if comparison.regressions else "no regression"
    head = [f"### eqaudit compare: {status}", "", f"_{_md(_title(comparison))}_", ""]
    cols = ["check", f"{_md(comparison.labels[0])} (reference)"]
    align = ["---", "---:"]
    for label in comparison.labels[1:]:
        cols += [_md(label), "change [CI]", ""]
        align += ["---:", "---:", ":---:"]
    rows = ["| " + " | ".join(cols) + " |", "|" + "|".join(align) + "|"]
    for i, ref in enumerate(comparison.reports[0].checks):
        cells = [_md(ref.name), format_number(ref.mean)]
        for diffs in comparison.differences:
            d = diffs[i]
            cells += [format_number(d.new), _md(change_text(d)), _MD[verdict(d)]]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join([*head, *rows, ""])
