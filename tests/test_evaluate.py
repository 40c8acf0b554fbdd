"""One evaluation core: the audit's chunk, the inverse-output hints, a sweep and EquivarianceError
return the per-sample errors of :func:`evaluate_checks` on the same points, for every strategy
(drawn transforms, masks, groups, Lie derivatives)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from eqaudit import EquivarianceError
from eqaudit.engine.chunk import measure_chunk, n_columns
from eqaudit.engine.estimator import BlockStats
from eqaudit.engine.evaluate import evaluate_checks
from eqaudit.engine.extras import first_block_errors
from eqaudit.engine.sampling import PointSampler
from eqaudit.engine.sweep import sweep_spec
from eqaudit.spec import spec_from_dict
from transforms_zoo import SampleRNG

CPU = torch.device("cpu")
CHECKS = [
    {"name": "rotate", "both": {"rotate": {"degrees": [-30, 30]}}},
    {"name": "shift", "both": {"shift": {"dx": [-2, 2], "dy": [-2, 2]}}, "mask": "valid"},
    {"name": "d4", "group": "D4", "output": "same"},
    {"name": "lie", "both": {"rotate": {"degrees": [-30, 30]}}, "mode": "lie"},
    {"name": "rot90", "both": "rot90", "distance": "relative_l2"},
]


def _spec(checks=CHECKS):
    return spec_from_dict({"input": {"shape": [1, 8, 8]}, "samples": 64, "seed": 3, "checks": checks})


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, 1, 3, padding=1)).double().eval()


def _reference(model, spec):
    """Each check's errors on samples 0..63, straight from the core."""
    rng = SampleRNG.for_range(spec.seed, 0, 64, CPU)
    x = PointSampler(spec, CPU, torch.float64).draw(rng)
    with torch.inference_mode():
        evaluation = evaluate_checks(model, spec.checks, x, model(x), rng, spec)
    assert [r.check_index for r in evaluation.checks] == list(range(len(spec.checks)))
    return x, [r.errors for r in evaluation.checks]


def _chunk_values(model, spec) -> torch.Tensor:
    """The per-sample errors the audit's chunk folds into the statistics."""
    stats = BlockStats(64, n_columns(spec), CPU)
    with torch.inference_mode():
        measure_chunk(model, spec, PointSampler(spec, CPU, torch.float64), stats, CPU, 0, 64)
    return stats.values


def test_the_audit_chunk_stores_the_cores_errors() -> None:
    model, spec = _model(), _spec()
    _, ref = _reference(model, spec)
    values = _chunk_values(model, spec)
    for j, errors in enumerate(ref):
        assert errors.shape == (64,) and torch.isfinite(errors).all()
        assert torch.equal(values[:, j], errors), spec.checks[j].name
    assert ref[0].max() > 0  # a generic conv net is not rotation-equivariant: the numbers mean something


def test_the_hints_path_computes_the_cores_errors() -> None:
    model, spec = _model(), _spec()
    _, ref = _reference(model, spec)
    sampler = PointSampler(spec, CPU, torch.float64)
    with torch.inference_mode():
        for j, check in enumerate(spec.checks):
            (errors,) = first_block_errors(model, spec, sampler, CPU, j, [check.output])
            assert torch.equal(errors, ref[j]), check.name


def test_a_sweep_point_is_the_audit_of_the_check_with_that_value() -> None:
    model, spec = _model(), _spec()
    swept, labels = sweep_spec(spec, "shift", "dx", [1, -2])
    values = _chunk_values(model, swept)
    for k, dx in enumerate([1, -2]):
        fixed = _spec([{"name": "shift", "both": {"shift": {"dx": dx, "dy": [-2, 2]}}, "mask": "valid"}])
        _, (errors,) = _reference(model, fixed)
        assert torch.equal(values[:, k], errors), labels[k]


def test_equivariance_error_is_the_mean_of_the_cores_errors() -> None:
    model, spec = _model(), _spec()
    x, ref = _reference(model, spec)
    l2 = EquivarianceError(model, (1, 8, 8), [("rot90", 0.0, 1.0)], dist="l2")
    _, (l2_errors,) = _reference(model, _spec([{"both": "rot90"}]))  # the spec's default distance: l2
    assert torch.equal(l2(x), l2_errors.mean())
    rel = EquivarianceError(model, (1, 8, 8), [("rot90", 0.0, 1.0)], dist="relative_l2")
    assert torch.equal(rel(x), ref[4].mean())


def test_gradients_flow_through_the_core_without_inference_mode() -> None:
    model, spec = _model(), _spec([{"both": "rot90"}])
    rng = SampleRNG.for_range(0, 0, 16, CPU)
    x = PointSampler(spec, CPU, torch.float64).draw(rng)
    evaluation = evaluate_checks(model, spec.checks, x, model(x), rng, spec, fuse=False, distance_dtype=None)
    evaluation.checks[0].errors.mean().backward()
    grad = model[0].weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("fuse", [True, False])
def test_fused_and_sequential_orders_agree(fuse: bool) -> None:
    model, spec = _model(), _spec()
    x, ref = _reference(model, spec)
    rng = SampleRNG.for_range(spec.seed, 0, 64, CPU)
    with torch.inference_mode():
        got = evaluate_checks(model, spec.checks, x, model(x), rng, spec, fuse=fuse, chosen=[4, 0, 2])
    assert [r.check_index for r in got.checks] == [4, 0, 2]
    for r in got.checks:
        assert torch.allclose(r.errors, ref[r.check_index], rtol=1e-12, atol=1e-14)
    group = got.checks[2]
    assert group.element_errors is not None and len(group.element_errors) == 8
    assert torch.allclose(torch.stack(group.element_errors).mean(dim=0), group.errors, rtol=1e-12, atol=1e-15)
