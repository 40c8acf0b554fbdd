"""Audit results and their renderings: Rich table, JSON, JUnit XML and Markdown.

Nothing here prints; the CLI chooses where each rendering goes.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from . import __version__

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
                f"| {_md(c.name)} | `{_md(c.input)}` | `{_md(c.output)}` | {c.distance} | {_g(c.mean)} | "
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
        if self.checkpoint:
            parts.insert(0, f"checkpoint {self.checkpoint}")
        return " · ".join(parts)

    def rich_table(self, width: int | None = None) -> Any:
        """A :class:`rich.table.Table` with one row per check and a footer caption.

        Below 110 columns the transforms and distance move under the check's name, so the numbers
        keep one line each.
        """
        from rich.table import Table

        title = "eqaudit" + (f" — {self.spec}" if self.spec else "")
        if width is not None and width < 110:
            return self._compact_table(title)
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
        for c in self.checks:
            status = "[bold green]PASS[/]" if c.passed else "[bold red]FAIL[/]"
            table.add_row(
                escape(c.name),
                escape(c.input),
                escape(c.output),
                c.distance,
                _g(c.mean),
                f"[{_g(c.ci_low)}, {_g(c.ci_high)}]",
                _g(c.threshold),
                status,
                _g(c.penalty),
            )
        return table


    def _compact_table(self, title: str) -> Any:
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=title, caption=self.footer())
        table.add_column("check", overflow="fold")
        for col in ("mean", self.confidence_label, "threshold", "status", "penalty"):
            table.add_column(col, justify="center" if col == "status" else "right", no_wrap=True)
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
            )
        return table


def _g(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    if x == 0:
        return "0"
    return f"{x:.4g}" if 1e-3 <= abs(x) < 1e5 else f"{x:.3e}"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _json_safe(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return out


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never half-written.

    Special files (``/dev/stdout``, pipes) are written directly, and the GitHub job summary file
    (``$GITHUB_STEP_SUMMARY``) is appended to, as GitHub expects.
    """
    path = Path(path)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if (summary and path.resolve() == Path(summary).resolve()) or (path.exists() and not path.is_file()):
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(text)
        return
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
