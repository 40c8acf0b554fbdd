"""EquivarianceCallback in a real Lightning Trainer on CPU: the audit's metrics and the penalty
reach the logger, and equal the audit of the module at that point."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from eqaudit import EquivarianceError  # noqa: E402
from eqaudit.errors import ArgumentError  # noqa: E402
from eqaudit.integrations.lightning import EquivarianceCallback  # noqa: E402
from eqaudit.monitor import audit_metrics  # noqa: E402
from eqaudit.spec import spec_from_dict  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")

SPEC = {"input": {"shape": [1, 4, 4], "bounds": [0, 1]}, "samples": 64, "seed": 2,
        "checks": [{"name": "hflip", "input": "hflip"}, {"name": "rot90", "input": "rot90"}]}


class Module(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
        self.equivariance = EquivarianceError(self.net, (1, 4, 4), [("identity", "hflip", 0.0, 0.5)], n=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        penalty = self.equivariance(x)
        return {"loss": nn.functional.cross_entropy(self(x), y) + penalty, "penalty": penalty.detach()}

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def _loader() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(48, 1, 4, 4, generator=g)
    y = (x[..., :2].sum((1, 2, 3)) > x[..., 2:].sum((1, 2, 3))).long()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


def test_a_trainer_logs_each_checks_mean_and_ci(tmp_path: Path):
    module, spec = Module(), spec_from_dict(SPEC)
    callback = EquivarianceCallback(spec, every_n_epochs=1)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=pl.loggers.CSVLogger(tmp_path, name="run"),
                         callbacks=[callback], enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, num_sanity_val_steps=0, log_every_n_steps=1)
    trainer.fit(module, _loader(), _loader())
    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    audited = [r for r in rows if r.get("eqaudit/rot90/mean")]
    assert [int(r["epoch"]) for r in audited] == [0, 1]
    expected = audit_metrics(module, spec)  # the last audit ran on the final weights
    for name, value in expected.items():
        assert float(audited[-1][name]) == pytest.approx(value, rel=1e-6), name
    assert expected["eqaudit/hflip/ci_low"] <= expected["eqaudit/hflip/mean"] <= expected["eqaudit/hflip/ci_high"]
    assert float(audited[0]["eqaudit/hflip/mean"]) != float(audited[-1]["eqaudit/hflip/mean"])  # training moved it
    penalties = [float(r["eqaudit/penalty_step"]) for r in rows if r.get("eqaudit/penalty_step")]
    assert len(penalties) == 6 and all(p >= 0 for p in penalties) and max(penalties) > 0
    assert float(trainer.callback_metrics["eqaudit/rot90/mean"]) == pytest.approx(expected["eqaudit/rot90/mean"],
                                                                                rel=1e-6)
    assert [epoch for epoch, _ in callback.history] == [0, 1] and module.training


def test_every_n_epochs_and_bad_arguments(tmp_path: Path):
    callback = EquivarianceCallback(spec_from_dict(SPEC), every_n_epochs=2, log_penalty=False)
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", logger=False, callbacks=[callback],
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         num_sanity_val_steps=0)
    trainer.fit(Module(), _loader(), _loader())
    assert [epoch for epoch, _ in callback.history] == [0, 2]
    with pytest.raises(ArgumentError, match="every_n_epochs"):
        EquivarianceCallback(spec_from_dict(SPEC), every_n_epochs=0)


def test_a_missing_lightning_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.setitem(sys.modules, "pytorch_lightning", None)
    monkeypatch.delitem(sys.modules, "eqaudit.integrations.lightning")
    with pytest.raises(ImportError, match=r"pip install 'eqaudit\[lightning\]'"):
        import eqaudit.integrations.lightning  # noqa: F401
