"""Audit results (:mod:`eqaudit.report.model`) and their renderings (:mod:`eqaudit.report.render`:
Rich table, JUnit XML, Markdown). Nothing here prints; the CLI chooses where each rendering goes.
"""

from __future__ import annotations

from .model import GATES, CheckResult, Report, gated_value, within
from .render import format_number

_g = format_number  # the name the CLI imported before the split

__all__ = ["GATES", "CheckResult", "Report", "format_number", "gated_value", "within"]
