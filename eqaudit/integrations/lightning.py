"""A PyTorch Lightning callback that audits the module at the end of its validation epochs and
logs each check's mean and confidence interval to the Lightning logger (optional extra
``lightning``: ``pip install 'eqaudit[lightning]'``).

>>> from eqaudit.integrations.lightning import EquivarianceCallback
>>> trainer = lightning.Trainer(callbacks=[EquivarianceCallback("spec.yaml", every_n_epochs=1)])

Logged: ``eqaudit/<check>/mean``, ``eqaudit/<check>/ci_low`` and ``eqaudit/<check>/ci_high``
(:func:`eqaudit.monitor.audit_metrics`: the audit engine, seeded by the spec, in eval mode,
torch's generators untouched).

The penalty in ``training_step``: build an :class:`eqaudit.EquivarianceError` on the module's
network and add it to the loss; return it as ``"penalty"`` and the callback logs it
(``log_penalty=True``) as ``eqaudit/penalty``::

    def __init__(self):
        ...
        self.equivariance = eqaudit.EquivarianceError(
            self.net, (1, 8, 8), [("identity", "rot90", 0.5, 0.05)], dist="cross_entropy_logits", n=64)

    def training_step(self, batch, batch_idx):
        x, y = batch
        task = F.cross_entropy(self.net(x), y)
        penalty = self.equivariance(x)     # the batch as the Monte Carlo sample
        return {"loss": task + penalty, "penalty": penalty.detach()}
"""

from __future__ import annotations

from typing import Any

from ..monitor import as_spec, audit_metrics, check_period


def _lightning() -> Any:
    """``lightning.pytorch`` (or the standalone ``pytorch_lightning``), or an ImportError naming the extra."""
    try:
        import lightning.pytorch as pl
    except ImportError:
        try:
            import pytorch_lightning as pl
        except ImportError:
            raise ImportError("eqaudit.integrations.lightning needs PyTorch Lightning: "
                              "pip install 'eqaudit[lightning]' (or pip install lightning)") from None
    return pl


_Callback: Any = _lightning().Callback

__all__ = ["EquivarianceCallback"]


class EquivarianceCallback(_Callback):  # type: ignore[misc, valid-type]
    """Audit the LightningModule against ``spec`` on every ``every_n_epochs``-th validation epoch end.

    Args:
        spec: a :class:`~eqaudit.spec.Spec` or the path of a spec file (read once, here).
        every_n_epochs: audit when ``current_epoch % every_n_epochs == 0`` (an integer >= 1).
        log_penalty: log the ``"penalty"`` that ``training_step`` returns (in its output dict)
            as ``eqaudit/penalty``.
        samples: overrides the spec's ``samples`` (a cheaper audit).
        prefix: the first part of every metric name.
    """

    def __init__(self, spec: Any, every_n_epochs: int = 1, log_penalty: bool = True, *,
                 samples: int | None = None, prefix: str = "eqaudit") -> None:
        super().__init__()
        every_n_epochs = check_period("every_n_epochs", every_n_epochs)
        self.spec, self.every_n_epochs, self.log_penalty = as_spec(spec), every_n_epochs, log_penalty
        self.samples, self.prefix = samples, prefix
        self.history: list[tuple[int, dict[str, float]]] = []

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Audit the module (not during the sanity check) and log the metrics."""
        if getattr(trainer, "sanity_checking", False) or trainer.current_epoch % self.every_n_epochs:
            return
        metrics = audit_metrics(pl_module, self.spec, samples=self.samples, prefix=self.prefix)
        self.history.append((int(trainer.current_epoch), metrics))
        pl_module.log_dict(metrics, on_step=False, on_epoch=True)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Log the penalty ``training_step`` returned as ``"penalty"`` (with ``log_penalty``)."""
        if self.log_penalty and isinstance(outputs, dict) and outputs.get("penalty") is not None:
            pl_module.log(f"{self.prefix}/penalty", outputs["penalty"], on_step=True, on_epoch=True)
