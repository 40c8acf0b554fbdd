"""eqaudit: audit, gate and fine-tune the equivariance of trained PyTorch models.

Public API (imported lazily so that ``eqaudit --help`` does not import torch)::

    from eqaudit import audit, load_spec, EquivarianceError
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

_EXPORTS = {
    "audit": "eqaudit.engine.run",
    "Report": "eqaudit.report",
    "CheckResult": "eqaudit.report",
    "load_spec": "eqaudit.spec",
    "Spec": "eqaudit.spec",
    "load_model": "eqaudit.io.checkpoint",
    "EquivarianceError": "eqaudit.regularizer",
    "EquivarianceRegularizer": "eqaudit.regularizer",
    "EqauditError": "eqaudit.errors",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'eqaudit' has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from .io.checkpoint import load_model
    from .engine.run import audit
    from .errors import EqauditError
    from .regularizer import EquivarianceError, EquivarianceRegularizer
    from .report import CheckResult, Report
    from .spec import Spec, load_spec
