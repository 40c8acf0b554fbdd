"""The HTML report: one self-contained page (inline CSS, inline SVG charts, PNG images as data
URIs; nothing fetched from the network) with the summary table, each check's error histogram
with its threshold and CI, the group-element and per-layer tables, a sweep's curve, and the worst
samples of each failing check side by side."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from . import png, svg
from .render import _interval, _sides, confidence_label, footer, format_number
from .render import _num as _f

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#1a202c;max-width:1200px}
h1{font-size:22px} h2{font-size:18px;margin-top:28px;border-bottom:1px solid #e2e8f0}
table{border-collapse:collapse;margin:8px 0} th,td{padding:4px 10px;border-bottom:1px solid #e2e8f0;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.pass{color:#2f855a;font-weight:700} .fail{color:#c53030;font-weight:700} .error{color:#b7791f;font-weight:700}
.banner{padding:10px 14px;border-radius:6px;font-size:18px;font-weight:700}
.banner.pass{background:#f0fff4} .banner.fail{background:#fff5f5} .banner.error{background:#fffff0}
.check{margin:12px 0;padding:8px 12px;border:1px solid #e2e8f0;border-radius:6px}
.row{display:flex;gap:14px;align-items:flex-end;flex-wrap:wrap;margin:6px 0}
figure{margin:0;text-align:center} figcaption{font-size:12px;color:#4a5568}
img.px{image-rendering:pixelated;border:1px solid #cbd5e0}
.chart .lbl{font-size:11px} .chart .tick{font-size:10px;fill:#4a5568} .muted{color:#718096;font-size:13px}
"""


def _status(c: Any) -> tuple[str, str]:
    if c.error is not None:
        return "error", "ERROR"
    return ("pass", "PASS") if c.passed else ("fail", "FAIL")


def render_html(report: Any, samples: Sequence[Any] = (), sweep: Any = None,
                shared: frozenset[str] | set[str] = frozenset()) -> str:
    """The page for ``report``; ``samples``: per-check :class:`eqaudit.engine.worst.CheckSamples`
    (histograms and worst samples), ``sweep``: an :class:`eqaudit.engine.sweep.Sweep` (its curve),
    ``shared``: the checks whose sides share one draw (``both:``)."""
    by_name = {s.name: s for s in samples}
    kind, word = ("error", "ERROR") if report.errors else (("pass", "PASSED") if report.passed else ("fail", "FAILED"))
    failing = [c.name for c in report.checks if not c.passed]
    title = "eqaudit" + (f" — {report.spec}" if report.spec else "")
    body = [f"<h1>{escape(title)}</h1>",
            f'<div class="banner {kind}">{word}' + (f": {escape(', '.join(failing))}" if failing else "") + "</div>",
            f'<p class="muted">{escape(footer(report))}</p>', _summary(report, shared)]
    if sweep is not None:
        body.append(_sweep_section(sweep))
    body.append(_table_section("Group elements", ["check", "element", "mean", "CI", "max", "status"],
                               _element_rows(report)))
    body.append(_table_section("Per-layer error", ["check", "layer", "mean", "CI", "max"], _layer_rows(report)))
    if sweep is None:
        body.append("<h2>Checks</h2>")
        ordered = sorted(report.checks, key=lambda c: c.passed)  # the failing checks first, else in order
        body += [_check_section(c, by_name.get(c.name), c.name in shared) for c in ordered]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(b for b in body if b) + "\n</body></html>\n")


def _summary(report: Any, shared: Any) -> str:
    rows = []
    for c in report.checks:
        kind, word = _status(c)
        sides = _sides(c, shared)
        rows.append([f'<a href="#check-{escape(c.name)}">{escape(c.name)}</a>', escape(sides[0]), escape(sides[1]),
                     escape(c.distance), _num(c.mean), _num_text(_interval(c.ci_low, c.ci_high)), _num(c.threshold),
                     f'<span class="{kind}">{word}</span>'])
    return _table(["check", "input", "output", "distance", "mean", confidence_label(report) if report.checks else "CI",
                   "threshold", "status"], rows)


def _num(x: Any) -> str:
    return f'<td class="num">{escape(format_number(x))}</td>'


def _num_text(text: str) -> str:
    return f'<td class="num">{escape(text)}</td>'


def _table(head: list[str], rows: list[list[str]]) -> str:
    cells = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def _table_section(title: str, head: list[str], rows: list[list[str]]) -> str:
    return f"<h2>{escape(title)}</h2>" + _table(head, rows) if rows else ""


def _element_rows(report: Any) -> list[list[str]]:
    rows = []
    for c in report.checks:
        for e in c.elements or []:
            word = "PASS" if e["passed"] else "FAIL"
            rows.append([escape(c.name), escape(e["element"]), _num(_f(e["mean"])),
                         _num_text(_interval(_f(e["ci_low"]), _f(e["ci_high"]))), _num(_f(e["max"])),
                         f'<span class="{word.lower()}">{word}</span>'])
    return rows


def _layer_rows(report: Any) -> list[list[str]]:
    rows = []
    for c in report.checks:
        for r in c.layers or []:
            if "skipped" in r:
                skipped = f'<td colspan="3" class="muted">{escape(r["skipped"])}</td>'
                rows.append([escape(c.name), escape(r["name"]), skipped])
            else:
                rows.append([escape(c.name), escape(r["name"]), _num(_f(r["mean"])),
                             _num_text(_interval(_f(r["ci_low"]), _f(r["ci_high"]))), _num(_f(r["max"]))])
    return rows


def _check_section(c: Any, samples: Any, shared: bool = False) -> str:
    kind, word = _status(c)
    sides = f"both: {c.input} (same draw)" if shared else f"{c.input} → {c.output}"
    head = (f'<div class="check" id="check-{escape(c.name)}" data-check="{escape(c.name)}">'
            f'<h3>{escape(c.name)} <span class="{kind}">{word}</span></h3>'
            f'<p class="muted">{escape(sides)} · {escape(c.distance)} · mean '
            f'{escape(format_number(c.mean))} · CI {escape(_interval(c.ci_low, c.ci_high))} · threshold '
            f'{escape(format_number(c.threshold))} ({escape(c.gate)})</p>')
    if c.error is not None:
        return head + f"<p>{escape(c.error)}</p></div>"
    parts = [head]
    if samples is not None and samples.errors:
        parts.append(f'<p class="muted">errors of the first {len(samples.errors)} samples:</p>')
        parts.append(svg.histogram(samples.errors, c.threshold, (c.ci_low, c.ci_high)))
    if samples is not None and samples.worst:
        parts.append("<h4>worst samples</h4>")
        parts += [_example(e) for e in samples.worst]
    return "".join(parts) + "</div>"


def _example(e: Any) -> str:
    """Input, transformed input, ``f_out(model(x))`` and ``model(f_in(x))`` side by side."""
    what = f"sample {e.index}" + (f", element {e.element}" if e.element else "") + f": error {format_number(e.error)}"
    figures = []
    if png.is_image(tuple(e.x.shape)):
        lo, hi = float(e.x.min()), float(e.x.max())
        figures += [_image(e.x, "input x", lo, hi), _image(e.transformed, "f_in(x)", lo, hi)]
    figures += _outputs(e.expected, e.got)
    return f'<div class="row"><p class="muted">{escape(what)}</p>{"".join(figures)}</div>'


def _image(t: Any, caption: str, lo: float | None = None, hi: float | None = None) -> str:
    side = max(t.shape[-2:])
    scale = max(1, min(8, 128 // max(1, side)))
    uri = png.data_uri(png.tensor_png(t, scale, lo, hi))
    return (f'<figure><img class="px" alt="{escape(caption)}" src="{uri}">'
            f'<figcaption>{escape(caption)}</figcaption></figure>')


def _outputs(expected: Any, got: Any) -> list[str]:
    labels = ("f_out(model(x))", "model(f_in(x))")
    if png.is_image(tuple(got.shape)) and expected.shape == got.shape:
        lo = min(float(expected.min()), float(got.min()))
        hi = max(float(expected.max()), float(got.max()))
        return [_image(expected, labels[0], lo, hi), _image(got, labels[1], lo, hi)]
    if got.dim() == 1 and expected.dim() == 1 and got.numel() <= 64:
        return [f"<figure>{svg.bars(_probabilities(t), label)}</figure>" for t, label in zip((expected, got), labels)]
    return [f'<p class="muted">{escape(label)}: shape {list(t.shape)}</p>' for t, label in zip((expected, got), labels)]


def _probabilities(t: Any) -> list[float]:
    """Class probabilities: the values when they already are (non-negative, sum 1), else a softmax."""
    v = t.double()
    if bool((v >= 0).all()) and abs(float(v.sum()) - 1.0) < 1e-3:
        return [float(p) for p in v]
    return [float(p) for p in v.softmax(0)]


def _sweep_section(sweep: Any) -> str:
    points = sweep.points
    check = sweep.report.checks[0]
    own = getattr(sweep, "own_value", None)
    chart = svg.curve([float(p.value) for p in points], [p.mean for p in points], [p.ci_low for p in points],
                      [p.ci_high for p in points], check.threshold, own, f"{sweep.transform}.{sweep.param}")
    rows = [[_num(p.value), _num(p.mean), _num_text(_interval(p.ci_low, p.ci_high)), _num(p.std)] for p in points]
    return (f'<h2>Sweep: {escape(sweep.check)}</h2><div class="check" data-check="{escape(sweep.check)}">'
            f"{chart}{_table([sweep.param, 'mean', 'CI', 'std'], rows)}</div>")
