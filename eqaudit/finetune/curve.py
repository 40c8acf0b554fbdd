"""The learning curve: the step results averaged over each ``log_every`` window, and the series of
training-dynamics points (``dynamics.every``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .trainer import StepResult


class Curve:
    """Averages of the step results over each ``log_every`` window."""

    def __init__(self, log_every: int) -> None:
        self.log_every = log_every
        self.points: list[dict[str, Any]] = []
        self.dynamics: list[dict[str, Any]] = []  # one point per dynamics.every steps
        self.window: dict[str, Any] = self._empty()

    @staticmethod
    def _empty() -> dict[str, Any]:
        return {"n": 0, "task": 0.0, "pen_n": 0, "pen": 0.0, "err": {}, "err_n": {}}

    def add(self, result: StepResult, total: int) -> dict[str, Any] | None:
        """Add one step; at the end of a window (or of the run) return the window's point."""
        window = self.window
        window["n"] += 1
        window["task"] += result.task_loss
        if result.penalty is not None:
            window["pen_n"] += 1
            window["pen"] += result.penalty
        for name, error in result.errors.items():
            window["err"][name] = window["err"].get(name, 0.0) + error
            window["err_n"][name] = window["err_n"].get(name, 0) + 1
        if result.step % self.log_every and result.step != total:
            return None
        point = {
            "step": result.step,
            "epoch": round(result.epoch, 6),
            "task_loss": window["task"] / window["n"],
            "penalty": window["pen"] / window["pen_n"] if window["pen_n"] else None,
            "errors": {name: window["err"][name] / window["err_n"][name] for name in window["err"]},
        }
        self.points.append(point)
        self.window = self._empty()
        return point

    def state(self) -> dict[str, Any]:
        """The points so far, the open window and the dynamics series (for the resumable state)."""
        return {"points": self.points, "window": self.window, "dynamics": self.dynamics}

    def load(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state`; ValueError when it is not one."""
        points, window = state.get("points"), state.get("window")
        if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
            raise ValueError("the learning curve's points are not a list of mappings")
        empty = self._empty()
        if not isinstance(window, dict) or set(window) != set(empty) or any(
                not isinstance(window[k], type(v)) for k, v in empty.items() if not isinstance(v, float)):
            raise ValueError(f"the learning curve's open window is not {{{', '.join(empty)}}}")
        dynamics = state.get("dynamics", [])
        if not isinstance(dynamics, list) or not all(isinstance(p, dict) for p in dynamics):
            raise ValueError("the dynamics series is not a list of mappings")
        self.points = list(points)
        self.window = dict(window)
        self.dynamics = list(dynamics)
