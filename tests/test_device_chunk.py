"""Chunks sized for the device: on CUDA the chunk is a function of free device memory and the
bytes a sample holds (a fake device memory checks the policy without a GPU), and the chunking
never changes the numbers. The CUDA-only tests skip cleanly without CUDA."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

import transforms_zoo.hash32 as zoo_hash32
from eqaudit.engine import chunking, run
from eqaudit.engine.chunk import copies_per_sample
from eqaudit.engine.distributed import World
from eqaudit.engine.sampling import PointSampler
from eqaudit.finetune import Trainer, config_from_dict, load_data
from eqaudit.spec import spec_from_dict
from finetune_project import make_project

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
GB = 10**9


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(32, 10))


def _mlp_spec(n: int):
    return spec_from_dict({"input": {"shape": [64]}, "samples": n, "checks": [
        {"name": "permute", "input": {"permute": {"dim": -1}}},
        {"name": "flip", "input": {"flip": {"dim": -1}}},
        {"name": "roll", "input": {"roll": {"shift": [1, 5], "dim": -1}}},
        {"name": "gain", "input": {"gain": {"factor": [0.9, 1.1]}}},
    ]})


def test_probe_measures_what_a_sample_holds_on_a_device():
    mlp = chunking.probe(_mlp(), torch.rand(64, 64))
    # the widest layer (a ReLU over 256 floats: in + out), the input, the output and its 4 copies
    assert mlp == chunking.Probe(layer=2048, input=256, output=40)
    assert mlp.device_bytes() == 256 + 2048 + 5 * 40
    cnn = chunking.probe(_cnn(), torch.rand(64, 1, 28, 28))
    assert cnn == chunking.Probe(layer=2 * 32 * 28 * 28 * 4, input=28 * 28 * 4, output=40)


@pytest.mark.parametrize(("free", "model", "n", "want"), [
    (80 * GB, "mlp", 65536, 65536),  # one chunk: 5 x 2504 bytes a sample is 0.8 GB
    (16 * GB, "mlp", 65536, 65536),
    (80 * GB, "mlp", 1 << 20, chunking.DEVICE_MAX_CHUNK),  # memory stays flat in the sample count
    (80 * GB, "mlp", 1000, 1024),  # never far above the sample count
    (64 << 20, "mlp", 65536, 1024),  # 16 MiB / 12520 bytes = 1340 -> 1024
    (80 * GB, "cnn", 65536, 16384),  # 20 GB / 1.02 MB a sample = 19604 -> 16384
    (16 * GB, "cnn", 65536, 2048),  # 4 GB / 1.02 MB = 3920 -> 2048
    (64 << 20, "cnn", 65536, 64),  # tiny: one block, however little fits
    (0, "cnn", 65536, 64),
])
def test_device_chunk_for_a_fake_device_memory(free, model, n, want):
    per_sample = {"mlp": 256 + 2048 + 5 * 40, "cnn": 3136 + 200704 + 5 * 40}[model]
    got = chunking.device_chunk(free, per_sample, n, copies=4)
    assert got == want
    assert got % chunking.BLOCK == 0
    if got > chunking.BLOCK:  # the chunk holds at most its share of the free memory
        assert got * per_sample * 5 <= free * chunking.DEVICE_MEMORY_FRACTION


def _chunk_on_a_fake_gpu(monkeypatch, free: int | None, model: nn.Module, spec, world=World()):
    """The engine's chunk choice for a CUDA device with ``free`` bytes free (the probe on CPU)."""
    monkeypatch.setattr(run, "free_device_bytes", lambda dev: free)
    sampler = PointSampler(spec, torch.device("cpu"), torch.float32)
    measured = chunking.probe(model, torch.rand(64, *sampler.shape))
    target = SimpleNamespace(dev=torch.device("cuda"), plan=None, world=world)
    return run._chunk_size(target, spec, sampler, None, measured)


def test_the_engine_sizes_cuda_chunks_by_free_memory_not_the_cpu_cap(monkeypatch):
    spec = _mlp_spec(65536)
    assert _chunk_on_a_fake_gpu(monkeypatch, 80 * GB, _mlp(), spec) == (65536, None)  # one chunk
    assert _chunk_on_a_fake_gpu(monkeypatch, 64 << 20, _mlp(), spec) == (1024, None)
    # no free-memory figure (or no probe): the input budget, as before
    assert _chunk_on_a_fake_gpu(monkeypatch, None, _mlp(), spec) == (chunking.MAX_CHUNK, None)
    # several processes: each still gets a chunk to work on
    two = World(rank=0, size=2)
    monkeypatch.setattr(run, "least_across", lambda value, world: value)
    assert _chunk_on_a_fake_gpu(monkeypatch, 80 * GB, _mlp(), spec, two) == (32768, None)


def test_cpu_chunks_are_unchanged_by_the_device_policy():
    report = run.audit(_mlp(), _mlp_spec(65536), noise_floor=False)
    assert report.batch_size == chunking.MAX_CHUNK


def _numbers(report) -> list[dict]:
    return [dataclasses.asdict(c) for c in report.checks]


def test_chunking_never_changes_the_numbers():
    model, spec = _mlp(), _mlp_spec(4096)
    on_gpu = chunking.device_chunk(80 * GB, chunking.probe(model, torch.rand(64, 64)).device_bytes(), 4096,
                                   copies_per_sample(spec))
    assert on_gpu == 4096
    reference = _numbers(run.audit(model, spec, batch_size=64))
    for size in (128, 4096, 1024, on_gpu):
        assert _numbers(run.audit(model, spec, batch_size=size)) == reference, size
    assert _numbers(run.audit(model, spec)) == reference  # the CPU policy's chunk and model calls
    assert all(math.isfinite(c["mean"]) and c["n"] == 4096 for c in reference)


@cuda
def test_a_cuda_audit_uses_the_device_chunk():
    model, spec = _mlp().cuda(), _mlp_spec(65536)
    report = run.audit(model, spec, noise_floor=False)
    free = chunking.free_device_bytes(torch.device("cuda"))
    per_sample = chunking.probe(model, torch.rand(64, 64, device="cuda")).device_bytes()
    # free memory moves a little between the audit's look and this one: within a factor of two
    want = chunking.device_chunk(free, per_sample, spec.samples, copies_per_sample(spec))
    assert want // 2 <= report.batch_size <= 2 * want
    assert report.batch_size > chunking.MAX_CHUNK or want <= chunking.MAX_CHUNK


class _Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(16, 2)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc(x.flatten(1))


def _device_reads(host_reads_type: type) -> Any:
    """The conftest's host-read counter, counting only the calls on a tensor off the CPU."""

    class DeviceReads(host_reads_type):  # type: ignore[misc, valid-type]
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if any(isinstance(a, torch.Tensor) and a.device.type != "cpu" for a in args):
                return super().__torch_function__(func, types, args, kwargs)
            return func(*args, **(kwargs or {}))

    return DeviceReads()


@cuda
@pytest.mark.parametrize(("reg", "per_step"), [({"points": "data"}, 3), ({"points": "data", "num_funcs": 1}, 2)])
def test_a_cuda_finetune_step_forwards_at_most_1_plus_num_funcs_and_reads_back_once(
        tmp_path, host_reads, monkeypatch, reg, per_step):
    proj = make_project(tmp_path)
    cfg = config_from_dict({
        "model": {"factory": "models.py:Tiny"}, "input": {"shape": [1, 4, 4]},
        "checks": [{"name": "hflip", "input": "hflip"}, {"name": "rot90", "input": "rot90"}],
        "data": {"path": "data.safetensors", "inputs": "x", "targets": "y"},
        "steps": 4, "batch_size": 16, "output": {"checkpoint": "o.safetensors"},
        "regularizer": reg, "optimizer": {"name": "sgd", "lr": 0.1}, "device": "cuda",
    }, proj)
    train, _ = load_data(cfg)
    model = _Counting().cuda()
    trainer = Trainer(cfg, model, train, "cuda")
    trainer.step()  # warm-up (kernels, allocator)
    monkeypatch.setattr(zoo_hash32, "_np", None)
    model.calls = 0
    reads = _device_reads(type(host_reads))
    with reads:
        got = trainer.step()
    assert model.calls == per_step  # the batch once + one per penalized check (num_funcs of them)
    # one read of the device (the checks num_funcs picks are drawn from the step on the host)
    assert reads.reads == {"tolist": 1}
    assert math.isfinite(got.penalty) and math.isfinite(got.task_loss)
