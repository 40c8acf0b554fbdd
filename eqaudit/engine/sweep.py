"""Sweeps: one check's error as a function of one transform parameter.

Each value of the parameter becomes its own check, so a single audit evaluates them all on the
same points, sharing the base forward pass.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from transforms_zoo import Compose, TransformError

from ..io.atomic import writes_in_place
from ..errors import ArgumentError, did_you_mean
from ..report import Report
from ..spec import Spec

MAX_VALUES = 2000


@dataclass(frozen=True)
class SweepPoint:
    value: float | int
    mean: float
    std: float
    stderr: float
    ci_low: float
    ci_high: float
    n: int


@dataclass(frozen=True)
class Sweep:
    """The result of a sweep: the check, the parameter and one point per value."""

    check: str
    param: str
    transform: str
    distance: str
    points: tuple[SweepPoint, ...]
    report: Report
    #: The swept check's own value of the parameter, when it fixes one (None: drawn or default).
    own_value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        def clean(v: Any) -> Any:
            return None if isinstance(v, float) and not math.isfinite(v) else v

        return {
            "tool": "eqaudit",
            "check": self.check,
            "param": self.param,
            "transform": self.transform,
            "distance": self.distance,
            "samples": self.report.samples,
            "seed": self.report.seed,
            "device": self.report.device,
            "points": [{k: clean(v) for k, v in dataclasses.asdict(p).items()} for p in self.points],
        }


def parse_values(text: str) -> list[float | int]:
    """``start:stop:step`` (inclusive of stop when it lies on the grid) or a comma list."""
    text = text.strip()
    if not text:
        raise ArgumentError("values", "no values given", hint="e.g. -180:180:15 or 0,90,180")
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ArgumentError("values", f"'{text}' is not start:stop:step", hint="e.g. -180:180:15")
        start, stop, step = (_number(p) for p in parts)
        if step == 0 or (stop - start) * step < 0:
            raise ArgumentError("values", f"'{text}': the step must move from start toward stop")
        try:
            span = (stop - start) / step
        except OverflowError:  # integers too large for a float
            span = math.inf
        if not span < MAX_VALUES:  # also an infinite span (1e308:-1e308:-1e307)
            many = f"{int(span) + 1}" if span < 1e9 else "too many"
            raise ArgumentError("values", f"'{text}' gives {many} values (at most {MAX_VALUES})")
        count = int(math.floor(span + 1e-9)) + 1
        if count > MAX_VALUES:
            raise ArgumentError("values", f"'{text}' gives {count} values (at most {MAX_VALUES})")
        values = [start + i * step for i in range(count)]
        if all(isinstance(v, int) for v in (start, stop, step)):
            return [int(v) for v in values]
        return [float(round(v, 12)) for v in values]
    values = [_number(p) for p in text.split(",") if p.strip()]
    if not values:
        raise ArgumentError("values", f"no values given in '{text}'", hint="e.g. -180:180:15 or 0,90,180")
    if len(values) > MAX_VALUES:
        raise ArgumentError("values", f"{len(values)} values (at most {MAX_VALUES})")
    return values


def _number(text: str) -> float | int:
    t = text.strip()
    try:
        return int(t)
    except ValueError:
        pass
    try:
        v = float(t)
    except ValueError:
        raise ArgumentError("values", f"'{t}' is not a number") from None
    if not math.isfinite(v):
        raise ArgumentError("values", f"'{t}' is not a finite number")
    return v


def sweep_spec(spec: Spec, check_name: str, param: str, values: list[float | int]) -> tuple[Spec, list[str]]:
    """A spec with one copy of the named check per value of ``param`` (names ``param=value``)."""
    if not values:
        raise ArgumentError("values", "no values given", hint="e.g. -180:180:15 or 0,90,180")
    names = [c.name for c in spec.checks]
    if check_name not in names:
        raise ArgumentError("check_name", f"no check named '{check_name}'",
                           hint=did_you_mean(check_name, names))
    check = spec.checks[names.index(check_name)]
    if check.worst_of is not None and check.worst_of.param is not None:  # its grid fixes the input transform
        raise ArgumentError("check_name", f"check '{check_name}' takes the worst over a grid of "
                            f"{check.worst_of.param}, built from its input transform: a sweep would not reach it",
                            hint="sweep a check without worst_of: {grid: ...}, or one with worst_of: K")
    t = check.input
    if isinstance(t, Compose) or not type(t).params:
        raise ArgumentError(
            "check_name", f"check '{check_name}' uses {t.describe()}, which has no parameter to sweep",
            hint="sweep a check whose input is a single zoo transform such as rotate or shift",
        )
    declared = [p.name for p in type(t).params]
    if param not in declared:
        raise ArgumentError("param", f"transform '{t.name}' has no parameter '{param}'",
                           hint=did_you_mean(param, declared))
    given = dict(getattr(t, "_given", {}))
    # An output written out as the same transform as the input follows the swept value too.
    same_output = check.both or (type(check.output) is type(t) and dict(getattr(check.output, "_given", {})) == given)
    checks, labels = [], []
    for v in values:
        try:
            new = type(t)(**{**given, param: v})
        except TransformError as exc:
            raise ArgumentError("values", f"{param}={v}: {exc.message}", hint=exc.hint) from None
        label = f"{param}={v}"
        labels.append(label)
        # stream: every value draws its other random parameters from the swept check's stream, so a
        # point equals the audit of the check with that value, and all points share those draws
        checks.append(dataclasses.replace(check, name=label, input=new, output=new if same_output else check.output,
                                          stream=check.stream_name))
    return spec.replace(checks=tuple(checks), num_funcs=None, layers=None), labels


def run_sweep(model: Any, spec: Spec, check_name: str, param: str, values: list[float | int],
              **audit_kwargs: Any) -> Sweep:
    """Audit every value of the parameter in one pass and collect the curve."""
    from .run import audit

    swept, labels = sweep_spec(spec, check_name, param, values)
    report = audit(model, swept, **audit_kwargs)
    base = spec.checks[[c.name for c in spec.checks].index(check_name)]
    points = tuple(
        SweepPoint(v, c.mean, c.std, c.stderr, c.ci_low, c.ci_high, c.n)
        for v, c in zip(values, (report.check(label) for label in labels))
    )
    own = dict(getattr(base.input, "_given", {})).get(param)
    own_value = float(own) if isinstance(own, (int, float)) and not isinstance(own, bool) else None
    return Sweep(check_name, param, base.input.name, base.distance.name, points, report, own_value)


def plot_sweep(sweep: Sweep, path: str) -> None:
    """Error versus parameter with its confidence band, as a PNG (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ArgumentError("path", "plotting a sweep needs matplotlib",
                           hint="pip install 'eqaudit[plot]' (or matplotlib)") from None
    from ..io.atomic import atomic_write

    xs = [float(p.value) for p in sweep.points]
    check = sweep.report.checks[0]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.fill_between(xs, [p.ci_low for p in sweep.points], [p.ci_high for p in sweep.points], color="C0", alpha=0.3,
                    linewidth=0, label=f"{check.confidence:.0%} CI")
    ax.errorbar(xs, [p.mean for p in sweep.points], capsize=2, marker="o", ms=3, color="C0", label="mean error",
                yerr=[[max(0.0, p.mean - p.ci_low) for p in sweep.points],
                      [max(0.0, p.ci_high - p.mean) for p in sweep.points]])  # visible even when the band is thin
    if math.isfinite(check.threshold):
        ax.axhline(check.threshold, color="C3", linestyle="--", label=f"threshold {check.threshold:g}")
    if sweep.own_value is not None:
        ax.axvline(sweep.own_value, color="C2", linestyle=":", label=f"check's {sweep.param}={sweep.own_value:g}")
    ax.set_xlabel(f"{sweep.transform}.{sweep.param}")
    ax.set_ylabel(f"error ({sweep.distance})")
    ax.set_title(f"eqaudit sweep — {sweep.check}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        if writes_in_place(path):  # /dev/stdout, a pipe: renaming onto it would replace it
            with open(path, "ab") as fh:
                fig.savefig(fh, format="png", dpi=120)
        else:
            atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    finally:
        plt.close(fig)
