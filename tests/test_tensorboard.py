"""eqaudit finetune --tensorboard DIR: the learning curve, per-check errors, penalties, the dynamics
series and the audits before/after as TensorBoard scalars, read back with tensorboard's reader."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from finetune_project import cli, make_project, write  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_the_scalars_are_the_reports_numbers(tmp_path):
    proj = make_project(tmp_path)
    cfg = write(proj, steps=10, extra="dynamics: {every: 5, enabled: false, iterations: 10, samples: 32}\n")
    board = tmp_path / "tb"
    r = cli(cfg, "--quiet", "--tensorboard", board, "--json", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "r.json").read_text())
    scalars = _scalars(board)
    curve = report["curve"]
    assert [s for s, _ in scalars["train/task_loss"]] == [p["step"] for p in curve] == [5, 10]
    for (step, value), point in zip(scalars["train/task_loss"], curve):  # float32 in the event file
        assert value == pytest.approx(point["task_loss"], rel=1e-6)
    assert [v for _, v in scalars["train/penalty"]] == pytest.approx([p["penalty"] for p in curve], rel=1e-6)
    assert [v for _, v in scalars["train/error/rot90"]] == pytest.approx(
        [p["errors"]["rot90"] for p in curve], rel=1e-6)
    for phase, step in (("before", 0), ("after", 10)):
        for check in report[phase]["audit"]["checks"]:
            assert dict(scalars[f"audit/{check['name']}/mean"])[step] == pytest.approx(check["mean"], rel=1e-6)
            assert dict(scalars[f"audit/{check['name']}/penalty"])[step] == pytest.approx(check["penalty"],
                                                                                          rel=1e-6, abs=1e-12)
    series = report["dynamics_series"]["points"]
    assert [s for s, _ in scalars["dynamics/hessian_top"]] == [5, 10]
    assert [v for _, v in scalars["dynamics/hessian_top"]] == pytest.approx([p["hessian_top"] for p in series],
                                                                           rel=1e-6)
    assert [v for _, v in scalars["dynamics/error/hflip"]] == pytest.approx(
        [p["errors"]["hflip"] for p in series], rel=1e-6)


def test_a_missing_tensorboard_names_the_extra_before_the_run(tmp_path, monkeypatch):
    proj = make_project(tmp_path)
    cfg = write(proj, steps=3)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    r = cli(cfg, "--tensorboard", tmp_path / "tb")
    assert r.exit_code == 2, r.output
    assert "--tensorboard: writing TensorBoard scalars needs the tensorboard package" in r.stderr
    assert "pip install 'eqaudit[tensorboard]'" in r.stderr and "Traceback" not in r.output
    assert not (proj / "out").exists()  # refused before anything ran


def test_a_file_is_not_a_log_folder(tmp_path):
    proj = make_project(tmp_path)
    cfg = write(proj, steps=3)
    (tmp_path / "tb").write_text("")
    r = cli(cfg, "--tensorboard", tmp_path / "tb")
    assert r.exit_code == 2 and "--tensorboard:" in r.stderr and "is not a folder" in r.stderr, r.output
