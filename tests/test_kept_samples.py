"""Per-sample errors kept by the audit itself (``audit(..., keep_samples=True)``): ``measure
--save-samples``, ``--baseline`` and several checkpoints forward the model exactly as often as the
plain audit (no second pass), the kept values are bit for bit those a separate pass through the
chunk function gives, and keeping them changes no figure of the report."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from eqaudit.cli import app
from eqaudit.engine.estimator import QUANTILE_CAP
from eqaudit.engine.run import audit
from eqaudit.spec import load_spec

from conftest import SPEC, make_project


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_project(tmp_path_factory.mktemp("kept"))


@contextmanager
def forwards(model_class: str = "TinyCNN") -> Iterator[list[int]]:
    """The batch size of every call of a model of class ``model_class`` (a global forward hook)."""
    calls: list[int] = []

    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        if type(module).__name__ == model_class:
            calls.append(int(args[0].shape[0]))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


def counted(*args: str) -> tuple[list[int], Any]:
    """The model's calls (batch sizes) during ``eqaudit measure ARGS --device cpu``, and the result."""
    with forwards() as calls:
        result = CliRunner().invoke(app, ["measure", *args, "--device", "cpu"])
    return calls, result


def test_saved_samples_baseline_and_several_checkpoints_forward_the_model_once(project: dict[str, Path],
                                                                               tmp_path: Path) -> None:
    """Each run makes exactly the plain audit's forward passes (the kept errors used to cost a
    second pass over every point: twice the calls)."""
    spec = ["--spec", str(project["spec"]), "-q"]
    plain, result = counted(str(project["a"]), *spec, "--json", str(tmp_path / "plain.json"))
    assert result.exit_code == 0, result.output
    assert plain and sum(plain) >= 256  # the audit's points and their transformed copies
    saved, result = counted(str(project["a"]), *spec, "--json", str(tmp_path / "base.json"), "--save-samples")
    assert result.exit_code == 0, result.output
    assert saved == plain
    assert len(json.loads((tmp_path / "base.json").read_text())["samples_errors"]["checks"]["rot"]) == 256
    against, result = counted(str(project["same"]), *spec, "--baseline", str(tmp_path / "base.json"),
                              "--json", str(tmp_path / "r.json"))
    assert result.exit_code == 0, result.output
    assert against == plain
    section = json.loads((tmp_path / "r.json").read_text())["baseline"]
    assert {d["interval"] for d in section["checks"]} == {"paired"} and all(d["change"] == 0 for d in section["checks"])
    several, result = counted(str(project["a"]), str(project["perturbed"]), *spec, "--json",
                              str(tmp_path / "many.json"), "--save-samples")
    assert result.exit_code == 0, result.output
    assert several == plain + plain


def second_pass(spec: Any, report: Any, checkpoint: Path) -> dict[str, list[float]]:
    """The per-sample errors as ``measure`` computed them before the audit kept them: a second pass
    over the report's points through the chunk function, into statistics keeping every value."""
    from eqaudit.engine.chunk import measure_chunk, n_columns
    from eqaudit.engine.chunking import round_up
    from eqaudit.engine.device import model_dtype
    from eqaudit.engine.estimator import BLOCK, BlockStats
    from eqaudit.engine.sampling import PointSampler

    spec = spec.replace(samples=report.samples, seed=report.seed)
    dev = torch.device(report.device)
    model = spec.build_model(checkpoint)
    model.eval()
    sampler = PointSampler(spec, dev, model_dtype(model))
    stats = BlockStats(spec.samples, n_columns(spec), dev, keep_values=spec.samples)
    active = [j for j, c in enumerate(report.checks) if c.error is None]
    step, end = round_up(report.batch_size or BLOCK, BLOCK), round_up(spec.samples, BLOCK)
    with torch.inference_mode():
        for start in range(0, end, step):
            measure_chunk(model, spec, sampler, stats, dev, start, min(step, end - start), active=active)
    values = stats.values.cpu()
    return {c.name: (values[:, j].tolist() if j in active else [math.nan] * spec.samples)
            for j, c in enumerate(report.checks)}


def same_bits(a: list[float], b: list[float]) -> bool:
    """Equal element by element, NaN where the other is NaN."""
    return len(a) == len(b) and all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b))


@pytest.mark.parametrize("batch_size", [64, None])
def test_kept_values_are_the_second_pass_bit_for_bit(tmp_path: Path, batch_size: int | None) -> None:
    """A plain, a group and a shift check drawn by num_funcs, and a check that cannot run (NaN)."""
    spec_dict = {**SPEC, "num_funcs": 2, "checks": [*SPEC["checks"], {"name": "c4", "group": "C4"},
                                                     {"name": "shift", "input": {"shift": {"dx": 1}}},
                                                     {"name": "broken", "input": "tiny_model.py:two_channels"}]}
    paths = make_project(tmp_path, spec_dict)
    spec = load_spec(paths["spec"])
    report = audit(None, spec, checkpoint=paths["a"], device="cpu", batch_size=batch_size, keep_samples=True)
    kept = report.sample_errors
    assert report.check("broken").error is not None
    assert (kept.seed, kept.samples, len(kept.points)) == (report.seed, 256, 16)
    old = second_pass(spec, report, paths["a"])
    assert set(kept.checks) == set(old) == {c.name for c in report.checks}
    for name, values in kept.checks.items():
        assert same_bits(list(values), old[name]), name
    assert all(math.isnan(v) for v in kept.checks["broken"])


def test_sequential_sampling_keeps_every_value_it_grows_to(project: dict[str, Path]) -> None:
    """``precision=EPS`` grows the sample count: the kept values cover the final count, equal to
    a second pass over it, and their mean is the report's."""
    spec = load_spec(project["spec"]).replace(samples=100)  # a partial last block, redone whole
    report = audit(None, spec, checkpoint=project["a"], device="cpu", precision=0.003, keep_samples=True)
    assert report.samples > 128 and report.sample_errors.samples == report.samples
    old = second_pass(spec, report, project["a"])
    for c in report.checks:
        values = report.sample_errors.checks[c.name]
        assert same_bits(list(values), old[c.name]), c.name
        assert math.fsum(values) / len(values) == pytest.approx(c.mean, rel=1e-12, abs=0)


def _figures(report: Any) -> dict[str, Any]:
    d = report.to_dict()
    d.pop("elapsed_s")
    return d


def test_keeping_more_values_than_the_quantiles_use_changes_no_figure(project: dict[str, Path]) -> None:
    """Above 16384 samples the quantiles still come from the first 16384 values: the report with
    every value kept is the plain one, and ``to_dict`` leaves the kept values out."""
    spec = load_spec(project["spec"]).replace(samples=QUANTILE_CAP + 128)
    plain = audit(None, spec, checkpoint=project["a"], device="cpu", noise_floor=False)
    keeping = audit(None, spec, checkpoint=project["a"], device="cpu", noise_floor=False, keep_samples=True)
    assert plain.sample_errors is None and "sample_errors" not in keeping.to_dict()
    assert _figures(keeping) == _figures(plain)
    assert keeping.checks[0].quantile_n == QUANTILE_CAP
    for c in keeping.checks:
        values = keeping.sample_errors.checks[c.name]
        assert len(values) == QUANTILE_CAP + 128 and not any(math.isnan(v) for v in values)
        assert math.fsum(values) / len(values) == pytest.approx(c.mean, rel=1e-12, abs=0)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_two_processes_keep_the_single_process_values(project: dict[str, Path], tmp_path: Path) -> None:
    """Under torchrun each process fills its own chunks' values; the reduce gives every value."""
    common = ["measure", str(project["a"]), "--spec", str(project["spec"]), "--device", "cpu", "--batch-size", "64",
              "--save-samples", "-q"]
    single, split = tmp_path / "single.json", tmp_path / "split.json"
    subprocess.run([sys.executable, "-m", "eqaudit", *common, "--json", str(single)], check=True, cwd=tmp_path,
                   timeout=300)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "eqaudit", *common, "--json", str(split)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    a, b = json.loads(single.read_text()), json.loads(split.read_text())
    assert a["checks"] == b["checks"] and "samples split across 2 processes" in b["notes"]
    assert a["samples_errors"] == b["samples_errors"]
    assert all(v is not None for values in b["samples_errors"]["checks"].values() for v in values)
