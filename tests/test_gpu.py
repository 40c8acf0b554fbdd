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
def test_audit_on_cuda_is_deterministic_across_batch_sizes():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 10)).cuda()
    spec = spec_from_dict({"input": {"shape": [1, 8, 8]}, "samples": 4096,
                           "checks": [{"input": "hflip"}, {"input": "rot90"}]})
    a = audit(model, spec, batch_size=512)
    b = audit(model, spec, batch_size=4096)
    assert a.to_dict()["checks"] == b.to_dict()["checks"]
