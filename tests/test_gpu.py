"""GPU paths: skipped cleanly without CUDA; on a GPU they must agree with the CPU. The property
that keeps a GPU busy, no read back to the host inside a chunk, is checked on CPU."""

from collections import Counter

import pytest
import torch

import eqaudit.engine.chunk as chunk
import transforms_zoo.hash32 as zoo_hash32
from eqaudit.engine.run import audit
from eqaudit.engine.sampling import rows_by_check
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


def _count_host_reads(monkeypatch, watch, model, spec) -> tuple[Counter[str], int]:
    """Run ``spec`` with the host reads inside every chunk counted by ``watch``, the draws on their
    torch (CUDA) path; returns the counts and the number of chunks."""
    monkeypatch.setattr(zoo_hash32, "_np", None)
    chunks, inner = [], chunk.measure_chunk

    def counted(*args, **kwargs):
        chunks.append(1)
        with watch:
            return inner(*args, **kwargs)

    monkeypatch.setattr(chunk, "measure_chunk", counted)
    audit(model, spec, device="cpu", batch_size=256)
    return watch.reads, len(chunks)


def test_a_chunk_reads_nothing_back_to_the_host(monkeypatch, host_reads):
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(4, 1, 3, padding=1))
    spec = spec_from_dict({"input": {"shape": [1, 8, 8]}, "samples": 1000, "checks": [
        {"input": "rot90", "distance": "l1"},
        {"name": "shift", "both": {"shift": {"dx": [-2, 2], "dy": [-2, 2]}}, "mask": "valid"},
        {"name": "rotate", "both": {"rotate": {"degrees": [-30, 30]}}, "distance": "relative_l2"},
        {"name": "scale", "both": {"scale": {"factor": [0.8, 1.2]}}, "distance": "linf"},
        {"name": "lie", "both": {"rotate": {"degrees": [-30, 30]}}, "mode": "lie"},
        {"name": "d4", "group": "D4", "output": "same"},
    ]})
    reads, chunks = _count_host_reads(monkeypatch, host_reads, conv, spec)
    assert chunks == 4
    assert reads == Counter()


def test_num_funcs_reads_one_count_per_chunk(monkeypatch, host_reads):
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    checks = [{"name": n, "input": t} for n, t in [("a", "hflip"), ("b", "vflip"), ("c", "rot90"), ("d", "transpose")]]
    spec = spec_from_dict({"input": {"shape": [1, 4, 4]}, "samples": 1000, "num_funcs": 2, "checks": checks})
    reads, chunks = _count_host_reads(monkeypatch, host_reads, mlp, spec)
    assert reads == Counter({"tolist": chunks})  # the per-check row counts, once for all checks


@pytest.mark.parametrize(("m", "k", "n"), [(1, 3, 100), (2, 5, 1000), (4, 4, 64), (3, 7, 257)])
def test_rows_by_check_are_the_rows_that_picked_each_check(m, k, n):
    picks = SampleRNG.for_range(3, 0, n, "cpu").choice(m, k)
    chosen = torch.zeros(n, k, dtype=torch.bool).scatter_(1, picks, True)
    rows = rows_by_check(picks, k)
    assert len(rows) == k
    for j in range(k):
        assert torch.equal(rows[j], chosen[:, j].nonzero().squeeze(1))
