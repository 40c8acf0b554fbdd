"""Inline SVG charts for the HTML report: an error histogram with its threshold and confidence
interval, a bar chart of class probabilities, and a sweep curve with its band and threshold."""

from __future__ import annotations

import math
from collections.abc import Sequence
from xml.sax.saxutils import escape

from .render import format_number

W, H, PAD = 420, 160, 34


def _axis_x(lo: float, hi: float, width: int = W) -> tuple[float, float, float]:
    span = hi - lo if hi > lo else 1.0
    return lo, span, (width - 2 * PAD) / span


def histogram(errors: Sequence[float], threshold: float, ci: tuple[float, float], bins: int = 30) -> str:
    """The errors' histogram; the threshold as a red line, the mean's CI as a blue band."""
    finite = [e for e in errors if math.isfinite(e)]
    marks = [v for v in (threshold, *ci) if math.isfinite(v)]
    lo = min(finite + marks + [0.0])
    hi = max(finite + marks + [lo + 1e-12])
    x0, span, sx = _axis_x(lo, hi)
    counts = [0] * bins
    for e in finite:
        counts[min(bins - 1, int((e - lo) / span * bins))] += 1
    top = max(counts + [1])
    bw = (W - 2 * PAD) / bins
    parts = [f'<svg width="{W}" height="{H}" class="chart">']
    for i, c in enumerate(counts):
        h = (H - 2 * PAD) * c / top
        parts.append(f'<rect x="{PAD + i * bw:.1f}" y="{H - PAD - h:.1f}" width="{bw - 1:.1f}" height="{h:.1f}" '
                     f'fill="#8a8f98"/>')
    if all(math.isfinite(v) for v in ci):
        a, b = (PAD + (v - x0) * sx for v in ci)
        parts.append(f'<rect x="{a:.1f}" y="{PAD - 8}" width="{max(b - a, 2):.1f}" height="{H - 2 * PAD + 8}" '
                     f'fill="#2b6cb0" fill-opacity="0.35"><title>CI of the mean</title></rect>')
    if math.isfinite(threshold):
        t = PAD + (threshold - x0) * sx
        parts.append(f'<line x1="{t:.1f}" x2="{t:.1f}" y1="{PAD - 10}" y2="{H - PAD}" stroke="#c53030" '
                     f'stroke-width="2"/><text x="{t + 3 if t < W / 2 else t - 3:.1f}" y="{PAD - 12}" class="lbl" '
                     f'text-anchor="{"start" if t < W / 2 else "end"}" fill="#c53030">'
                     f'threshold {format_number(threshold)}</text>')
    parts.append(_x_ticks(lo, hi, x0, sx))
    parts.append(f'<text x="{PAD}" y="{H - 4}" class="lbl">error ({len(finite)} samples); blue: CI of the mean</text>')
    return "".join(parts) + "</svg>"


def _x_ticks(lo: float, hi: float, x0: float, sx: float, width: int = W, height: int = H) -> str:
    out = [f'<line x1="{PAD}" x2="{width - PAD}" y1="{height - PAD}" y2="{height - PAD}" stroke="#333"/>']
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        x = PAD + (v - x0) * sx
        out.append(f'<text x="{x:.1f}" y="{height - PAD + 12}" class="tick" text-anchor="middle">'
                   f'{format_number(v)}</text>')
    return "".join(out)


def bars(probs: Sequence[float], title: str) -> str:
    """Class probabilities as vertical bars (the largest in blue), labelled by class index."""
    n = len(probs)
    w, h = max(120, 14 * n + 20), 110
    top = max(list(probs) + [1e-12])
    best = max(range(n), key=lambda i: probs[i]) if n else -1
    parts = [f'<svg width="{w}" height="{h}" class="chart">',
             f'<text x="4" y="12" class="lbl">{escape(title)}</text>']
    for i, p in enumerate(probs):
        bh = 70 * p / top
        parts.append(f'<rect x="{10 + 14 * i}" y="{90 - bh:.1f}" width="11" height="{bh:.1f}" '
                     f'fill="{"#2b6cb0" if i == best else "#a0aec0"}"><title>{i}: {p:.3f}</title></rect>'
                     f'<text x="{15.5 + 14 * i}" y="102" class="tick" text-anchor="middle">{i}</text>')
    return "".join(parts) + "</svg>"


def curve(xs: Sequence[float], means: Sequence[float], lows: Sequence[float], highs: Sequence[float],
          threshold: float, own: float | None, xlabel: str) -> str:
    """A sweep: the mean error per value, its CI band, the threshold and the check's own value."""
    w, h = 620, 240
    ys = [v for v in list(means) + list(lows) + list(highs) + [threshold] if math.isfinite(v)]
    y_lo, y_hi = 0.0, max(ys + [1e-12]) * 1.05
    x0, span, sx = _axis_x(min(xs), max(xs), w)

    def px(x: float) -> float:
        return PAD + (x - x0) * sx

    def py(y: float) -> float:
        return h - PAD - (h - 2 * PAD) * (y - y_lo) / (y_hi - y_lo)

    band = [f"{px(x):.1f},{py(v):.1f}" for x, v in zip(xs, highs) if math.isfinite(v)]
    band += [f"{px(x):.1f},{py(v):.1f}" for x, v in reversed(list(zip(xs, lows))) if math.isfinite(v)]
    line = " ".join(f"{px(x):.1f},{py(v):.1f}" for x, v in zip(xs, means) if math.isfinite(v))
    parts = [f'<svg width="{w}" height="{h}" class="chart">',
             f'<polygon points="{" ".join(band)}" fill="#2b6cb0" fill-opacity="0.3"/>',
             f'<polyline points="{line}" fill="none" stroke="#2b6cb0" stroke-width="2"/>']
    if math.isfinite(threshold):
        parts.append(f'<line x1="{PAD}" x2="{w - PAD}" y1="{py(threshold):.1f}" y2="{py(threshold):.1f}" '
                     f'stroke="#c53030" stroke-dasharray="5,3"/><text x="{w - PAD}" y="{py(threshold) - 3:.1f}" '
                     f'class="lbl" text-anchor="end" fill="#c53030">threshold {format_number(threshold)}</text>')
    if own is not None and math.isfinite(own):
        parts.append(f'<line x1="{px(own):.1f}" x2="{px(own):.1f}" y1="{PAD}" y2="{h - PAD}" stroke="#2f855a" '
                     f'stroke-dasharray="2,2"/><text x="{px(own) + 3:.1f}" y="{PAD + 10}" class="lbl" '
                     f'fill="#2f855a">check\'s value</text>')
    parts.append(_x_ticks(min(xs), max(xs), x0, sx, w, h))
    parts.append(f'<text x="{PAD}" y="{PAD - 6}" class="lbl">max {format_number(y_hi / 1.05)}; x: '
                 f'{escape(xlabel)}</text>')
    return "".join(parts) + "</svg>"
