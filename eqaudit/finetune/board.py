"""TensorBoard scalars of a fine-tune (``--tensorboard DIR``, optional extra ``tensorboard``): the
learning curve, the penalty and each check's (and layer's) error per logged step, the dynamics
series, and the audits' per-check means before (step 0) and after (the last step)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ArgumentError

Callback = Callable[[str, Mapping[str, Any]], None]

#: The events written as scalars: their tag group and their figures (then each check's error).
_SERIES = {"log": ("train", ("task_loss", "penalty")), "dynamics_point": ("dynamics", ("hessian_top", "sharpness"))}


def require_tensorboard(log_dir: str | Path) -> Path:
    """The log folder, checked before the run: the ``tensorboard`` package importable (else an
    error naming the extra) and the path not an existing non-folder."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ArgumentError("tensorboard", "writing TensorBoard scalars needs the tensorboard package",
                            hint="pip install 'eqaudit[tensorboard]' (or pip install tensorboard)") from None
    path = Path(log_dir)
    if path.exists() and not path.is_dir():
        raise ArgumentError("tensorboard", f"'{path}' exists and is not a folder", hint="name a folder for the logs")
    return path


class BoardWriter:
    """Writes the run's events as TensorBoard scalars into ``log_dir`` (one event file per run)."""

    def __init__(self, log_dir: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(require_tensorboard(log_dir)))

    def wrap(self, callback: Callback | None) -> Callback:
        """A callback that writes the scalars, then hands the event on to ``callback``."""
        def both(event: str, data: Mapping[str, Any]) -> None:
            self.event(event, data)
            if callback is not None:
                callback(event, data)

        return both

    def _scalar(self, tag: str, value: Any, step: int) -> None:
        if value is not None:
            self.writer.add_scalar(tag, float(value), int(step))

    def event(self, event: str, data: Mapping[str, Any]) -> None:
        """A learning-curve point (``log``) or a point of the dynamics series (``dynamics_point``)."""
        if event not in _SERIES:
            return
        group, figures = _SERIES[event]
        step = data["step"]
        for figure in figures:
            self._scalar(f"{group}/{figure}", data.get(figure), step)
        for name, error in (data.get("errors") or {}).items():
            self._scalar(f"{group}/error/{name}", error, step)

    def audits(self, before: Any, after: Any, last_step: int) -> None:
        """The audits' per-check means and penalties: before at step 0, after at ``last_step``."""
        for report, step in ((before, 0), (after, last_step)):
            for check in report.checks:
                if check.error is None:
                    self._scalar(f"audit/{check.name}/mean", check.mean, step)
                    self._scalar(f"audit/{check.name}/penalty", check.penalty, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
