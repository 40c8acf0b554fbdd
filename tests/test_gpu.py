"""GPU paths: skipped cleanly without CUDA; on a GPU they must agree with the CPU."""

import pytest
import torch

from eqaudit.engine import audit
from eqaudit.spec import spec_from_dict
from transforms_zoo import SampleRNG

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
def test_keyed_rng_is_identical_on_cpu_and_cuda():
    for dtype in (torch.float32, torch.float64):
        a = SampleRNG.for_range(7, 1000, 3000, "cpu").uniform(5, 3, dtype=dtype)
        b = SampleRNG.for_range(7, 1000, 3000, "cuda").uniform(5, 3, dtype=dtype)
        assert torch.equal(a, b.cpu())
    a = SampleRNG.for_range(7, 0, 500, "cpu").permutation(10)
    b = SampleRNG.for_range(7, 0, 500, "cuda").permutation(10)
    assert torch.equal(a, b.cpu())


@cuda
def test_audit_on_cuda_agrees_with_cpu():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(512, 10)
    ).double()
    spec = spec_from_dict(
        {"input": {"shape": [1, 8, 8]}, "samples": 2048,
         "checks": [{"input": "rot90"}, {"name": "shift", "input": {"shift": {"dx": [-2, 2]}}},
                    {"name": "rot", "input": {"rotate": {"degrees": [-30, 30]}}}]}
    )
    cpu = audit(model, spec, device="cpu")
    gpu = audit(model, spec, device="cuda")
    assert gpu.device.startswith("cuda")
    for a, b in zip(cpu.checks, gpu.checks):
        assert a.n == b.n
        assert b.mean == pytest.approx(a.mean, rel=1e-6)


@cuda
def test_audit_on_cuda_is_nearly_identical_across_batch_sizes():
    # cuBLAS picks kernels by batch size, so per-sample outputs may differ in the last bits;
    # the points and parameters are identical, so the estimates agree to ~1e-9 relative.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 10)).cuda()
    spec = spec_from_dict({"input": {"shape": [1, 8, 8]}, "samples": 4096,
                           "checks": [{"input": "hflip"}, {"input": "rot90"}]})
    a = audit(model, spec, batch_size=512)
    b = audit(model, spec, batch_size=4096)
    for x, y in zip(a.checks, b.checks):
        assert x.n == y.n
        assert x.mean == pytest.approx(y.mean, rel=1e-7)
        assert x.std == pytest.approx(y.std, rel=1e-6)


@cuda
def test_bf16_on_cuda_runs_and_is_close():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(512, 10)).cuda()
    spec = spec_from_dict({"input": {"shape": [1, 8, 8]}, "samples": 2048, "checks": [{"input": "rot90"}]})
    full = audit(model, spec).checks[0].mean
    half = audit(model, spec, precision="bf16").checks[0].mean
    assert half == pytest.approx(full, rel=0.05)
