"""Tables that fit a terminal (issue 17, Show): at 80 and 200 columns every number is printed
whole, with or without the quantile columns; the transforms table keeps its descriptions; the
FAILED line reads right for one check; the progress bar knows its total from the start."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from eqaudit.report import Report
from eqaudit.report.render import exceeded, format_number

GOLDEN = Path(__file__).resolve().parent / "golden"


def _text(renderable: object, width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


@pytest.mark.parametrize("width", [80, 100, 120, 200])
@pytest.mark.parametrize("quantiles", [False, True])
@pytest.mark.parametrize("golden", ["digits.json", "blur.json", "digits_invariance.json"])
def test_every_number_is_printed_whole(golden: str, quantiles: bool, width: int) -> None:
    report = Report.from_json((GOLDEN / golden).read_text())
    text = _text(report.rich_table(width, quantiles=quantiles), width)
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    tokens = set(re.split(r"[\s│┃\[\],]+", text))
    for c in report.checks:
        numbers = [c.mean, c.ci_low, c.ci_high, c.threshold] + ([c.p50, c.p95, c.p99, c.max] if quantiles else [])
        for x in numbers:
            assert format_number(x) in tokens, (c.name, format_number(x), text)
        assert c.name[:12] in text.replace("\n", "")  # the name column is never squeezed to nothing


def test_transforms_table_keeps_descriptions_at_80_columns() -> None:
    import transforms_zoo
    from eqaudit.cli.transform_docs import transforms_table

    text = _text(transforms_table(80), 80)
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    words = set(re.split(r"[\s│┃]+", text))
    for name in transforms_zoo.names():
        assert name in words
        for word in transforms_zoo.get(name).summary.split():
            assert word in text, (name, word)


def test_failed_line_grammar() -> None:
    assert exceeded(["rot90"]) == "rot90 exceeds its threshold"
    assert exceeded(["a", "b"]) == "a, b exceed their thresholds"


def test_progress_shows_the_total_from_the_start(monkeypatch) -> None:
    from rich.progress import Progress

    from eqaudit.cli.output import with_progress

    totals: list[object] = []
    original = Progress.add_task

    def add_task(self, *args, **kwargs):
        totals.append(kwargs.get("total"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Progress, "add_task", add_task)
    assert with_progress(True, "measuring", lambda progress: 7, total=2048) == 7
    assert totals == [2048]


def test_shared_draws_are_marked_and_independent_ones_noted(project: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from conftest import write_spec
    from eqaudit.cli import app

    write_spec(project, """
        model: {factory: models.py:Roll}
        input: {shape: [1, 8, 8]}
        samples: 64
        checks:
          - {name: shared, both: {rotate: {degrees: [-30, 30]}}, threshold: 10}
          - {name: independent, input: {rotate: {degrees: [-30, 30]}}, output: {rotate: {degrees: [-30, 30]}},
             threshold: 10}
          - {name: fixed, input: {rotate: {degrees: 30}}, output: {rotate: {degrees: 30}}, threshold: 10}
    """)
    (project / "models.py").write_text((project / "models.py").read_text() + (
        "\nclass Roll(torch.nn.Module):\n    def forward(self, x):\n        return torch.roll(x, 1, -1)\n"))
    monkeypatch.chdir(project)
    import eqaudit.cli.measure as measure

    monkeypatch.setattr(measure, "out", Console(width=200, file=io.StringIO(), record=True))
    r = CliRunner().invoke(app, ["measure", "--spec", "spec.yaml"])
    table = measure.out.export_text()
    rows = {line.split("│")[1].strip(): line for line in table.splitlines() if line.count("│") > 3}
    assert "both: rotate(degrees=[-30, 30])" in rows["shared"] and "(same draw)" in rows["shared"]
    assert "both:" not in rows["independent"] and "both:" not in rows["fixed"]
    notes = " ".join(r.stderr.split())
    assert "check 'independent': input and output are the same random transform" in notes
    assert "'shared'" not in notes and "'fixed'" not in notes


@pytest.mark.parametrize("width", [80, 200])
def test_an_interval_of_nan_or_inf_is_printed_not_read_as_markup(width: int) -> None:
    """Rich read '[nan, nan]' (a check that could not run) and '[inf, inf]' as markup tags and
    printed an empty cell."""
    import dataclasses
    import math

    report = Report.from_json((GOLDEN / "digits.json").read_text())
    errored = dataclasses.replace(report.checks[0], error="it failed", mean=math.nan, ci_low=math.nan,
                                  ci_high=math.nan)
    unbounded = dataclasses.replace(report.checks[1], ci_low=math.inf, ci_high=math.inf)
    report = dataclasses.replace(report, checks=(errored, unbounded) + report.checks[2:])
    text = _text(report.rich_table(width), width)
    assert "[nan, nan]" in text and "[inf, inf]" in text, text
