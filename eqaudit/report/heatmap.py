"""The layers x channels heatmap of a report's per-channel rows (``layers: {per_channel: true}``,
``eqaudit measure --plot-layers PNG``), drawn with matplotlib (the ``plot`` extra)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..errors import EqauditError

#: Width of the figure, and height of each check's row of panels plus the margin, in inches (at DPI).
WIDTH_IN, ROW_IN, MARGIN_IN, DPI = 10.0, 3.0, 1.0, 100
#: The two panels of each check: the per-channel field shown and its colour-bar label.
PANELS = (("error", "error per channel (relative L2)"),
          ("normalized_variance", "normalized variance (transforms / samples)"))


def require_plotting(flag: str, spec: Any, path: Any, checkpoints: int) -> None:
    """Refuse ``flag`` before the run: matplotlib missing (exit 2 naming the ``plot`` extra), a spec
    without per-channel rows, a stream instead of a file, or several checkpoints."""
    if path is None:
        return
    if str(path) == "-":
        raise EqauditError("writes a PNG file, not stdout", key=flag, hint="give a file name such as layers.png")
    if checkpoints > 1:
        raise EqauditError("draws the run of one checkpoint", key=flag,
                           hint=f"audit each checkpoint with its own {flag}")
    if spec.layers is None or not spec.per_channel:
        raise spec.error("layers", f"{flag} needs the per-channel errors of the layers",
                         "write layers: {names: all, per_channel: true} in the spec")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise EqauditError("needs matplotlib", key=flag,
                           hint="pip install 'eqaudit[plot]' (the 'plot' extra, or matplotlib)") from None


def channel_grid(check: Any, field: str) -> tuple[list[str], list[list[float]]]:
    """The measured layers of ``check`` and, per layer, ``field`` per channel (rows padded with NaN
    to the widest layer; None values become NaN)."""
    rows = [row for row in check.layers or [] if row.get("channels")]
    names = [row["name"] for row in rows]
    values = [[math.nan if v is None else float(v) for v in row["channels"][field]] for row in rows]
    width = max((len(v) for v in values), default=0)
    return names, [v + [math.nan] * (width - len(v)) for v in values]


def figure_size(report: Any) -> tuple[int, int]:
    """The PNG's (width, height) in pixels: one row of panels per check with per-channel rows."""
    n = sum(1 for c in report.checks if channel_grid(c, "error")[0])
    return int(WIDTH_IN * DPI), int((MARGIN_IN + ROW_IN * n) * DPI)


def plot_layer_channels(report: Any, path: str | Path, flag: str = "--plot-layers") -> None:
    """Write the heatmap of ``report`` to ``path`` as a PNG, atomically (rows: layers, columns:
    channels; per check, the error and the normalized variance)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..io.atomic import atomic_write, writes_in_place
    from ..io.outputs import output_error

    checks = [c for c in report.checks if channel_grid(c, "error")[0]]
    if not checks:
        raise EqauditError("no check has per-channel rows to draw", key=flag,
                           hint="the checks' transforms must act on feature maps (flips, quarter turns, shifts)")
    width, height = figure_size(report)
    fig, axes = plt.subplots(len(checks), len(PANELS), figsize=(width / DPI, height / DPI), dpi=DPI, squeeze=False)
    cmap = matplotlib.colormaps["magma"].with_extremes(bad="lightgrey")  # NaN: no such channel, or 0/0
    try:
        for row, check in enumerate(checks):
            for col, (field, label) in enumerate(PANELS):
                names, values = channel_grid(check, field)
                ax = axes[row][col]
                image = ax.imshow(np.array(values, dtype=float), aspect="auto", cmap=cmap, interpolation="nearest")
                ax.set_yticks(range(len(names)), labels=names, fontsize=7)
                ax.set_ylabel("layer", fontsize=8)
                ax.set_xlabel("channel (grey: none, or undefined)", fontsize=8)
                ax.set_title(f"{check.name}: {label}", fontsize=9)
                fig.colorbar(image, ax=ax)
        fig.subplots_adjust(left=0.1, right=0.97, bottom=0.6 / (height / DPI), top=1 - 0.4 / (height / DPI),
                            hspace=0.5, wspace=0.3)
        try:
            if writes_in_place(path):  # /dev/stdout, a pipe: renaming onto it would replace it
                with open(path, "ab") as fh:
                    fig.savefig(fh, format="png", dpi=DPI)
            else:
                atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
        except OSError as exc:
            raise output_error(path, flag, exc) from None
    finally:
        plt.close(fig)
