"""Automatic chunk size and rows per model call: the chunk is bounded by the input budget
everywhere; on CPU the model calls are bounded by the model's largest layer working set so that
each forward pass stays in cache (and, with per-layer errors, the chunk itself)."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from eqaudit.engine import chunking
from eqaudit.engine.run import audit
from eqaudit.spec import spec_from_dict


def _spec(shape, n=4096, checks=4):
    """``checks`` flips; their own thresholds keep the dtype's output-scale pass out of the model
    calls these tests count."""
    return spec_from_dict({
        "input": {"shape": shape}, "samples": n,
        "checks": [{"name": f"c{i}", "input": {"flip": {"dim": -1}}, "threshold": 1.0} for i in range(checks)],
    })


def test_probe_layer_is_the_largest_input_plus_output_per_sample():
    model = nn.Sequential(nn.Linear(8, 100), nn.ReLU(), nn.Linear(100, 3))
    got = chunking.probe(model, torch.rand(64, 8)).layer
    assert got == (100 + 100) * 4  # the ReLU: 100 in, 100 out, float32


def test_probe_of_a_non_module_or_a_failing_model_is_none():
    assert chunking.probe(lambda x: x, torch.rand(4, 3)) is None
    assert chunking.probe(nn.Linear(5, 2), torch.rand(4, 3)) is None


def test_cpu_chunk_keeps_one_fused_layer_within_the_working_set():
    cpu = torch.device("cpu")
    size = chunking.auto_batch_size(64, cpu, 1 << 20, layer_bytes=2048, copies=4)
    assert size * 4 * 2048 <= chunking.CPU_WORKING_SET and size % 64 == 0
    assert size == chunking.CPU_WORKING_SET // (4 * 2048)
    # a bound between powers of two goes to the nearer one (power-of-two chunks split 4096
    # samples evenly): 1.41x the working set -> 2**10, 1.55x -> 2**11
    ws = chunking.CPU_WORKING_SET
    assert chunking.auto_batch_size(64, cpu, 4096, layer_bytes=round(ws / 1024 / 1.41)) == 1024
    assert chunking.auto_batch_size(64, cpu, 4096, layer_bytes=round(ws / 1024 / 1.45)) == 2048
    assert chunking.nearest_power_of_two(0.3) == 1 and chunking.nearest_power_of_two(3) == 4
    # without a probe, or on a GPU, the input budget alone decides
    assert chunking.auto_batch_size(64, cpu, 1 << 20) == chunking.CPU_ELEMENTS // 64
    assert chunking.auto_batch_size(64, torch.device("cuda"), 1 << 20, layer_bytes=2048, copies=4) == chunking.MAX_CHUNK
    # never below one block, never far above the sample count
    assert chunking.auto_batch_size(64, cpu, 1 << 20, layer_bytes=1 << 30) == 64
    assert chunking.auto_batch_size(64, cpu, 100) == 128


def test_audit_sizes_model_calls_from_the_model_and_the_numbers_do_not_change():
    torch.manual_seed(0)
    wide = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 10))
    calls: list[int] = []
    wide.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    spec = _spec([64], n=4096)
    auto = audit(wide, spec, noise_floor=False)
    assert auto.batch_size == chunking.CPU_ELEMENTS // 64  # the chunk: the input budget
    rows = chunking.CPU_WORKING_SET // ((512 + 512) * 4)  # the widest layer's input + output per row
    assert rows == 1024
    # the probe, then per chunk: the base points and each check's transformed points, each in
    # calls of `rows` rows (no concatenation of the checks' inputs)
    assert calls == [64] + [rows] * (5 * 4096 // rows)
    fixed = audit(wide, spec, batch_size=1024)
    assert [c.mean for c in auto.checks] == [c.mean for c in fixed.checks]
    assert [c.p95 for c in auto.checks] == [c.p95 for c in fixed.checks]


def test_small_fused_groups_stay_one_call_and_per_layer_errors_bound_the_chunk():
    from eqaudit.spec import spec_from_dict

    torch.manual_seed(0)
    wide = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 10))
    calls: list[int] = []
    wide.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    audit(wide, _spec([64], n=256), noise_floor=False)
    assert calls == [64, 256, 4 * 256]  # probe, base, the four checks fused (within 1024 rows)
    layered = spec_from_dict({
        "input": {"shape": [64]}, "samples": 4096, "layers": ["0"],
        "checks": [{"name": f"c{i}", "input": {"flip": {"dim": -1}}} for i in range(4)],
    })
    report = audit(wide, layered, noise_floor=False)
    # the taps need each check's rows in one call: 4 MiB / (5 copies x 4 KiB) = 205 -> 256
    assert report.batch_size == 256
    plain = audit(wide, layered.replace(layers=None), noise_floor=False)
    assert plain.batch_size == 4096
    assert [c.mean for c in report.checks] == [c.mean for c in plain.checks]


def test_many_small_checks_share_model_calls_up_to_the_row_bound():
    torch.manual_seed(0)
    wide = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 10))
    calls: list[int] = []
    hook = wide.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    spec = _spec([64], n=256, checks=12)
    packed = audit(wide, spec, noise_floor=False)
    rows = chunking.CPU_WORKING_SET // ((512 + 512) * 4)
    per_call = rows // 256  # checks whose 256 rows fit one call together
    assert calls == [64, 256] + [per_call * 256] * (12 // per_call)
    hook.remove()
    fixed = audit(wide, spec, batch_size=256, noise_floor=False)  # all 12 checks in one call
    assert [c.mean for c in packed.checks] == [c.mean for c in fixed.checks]


def _scripted(module: nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():  # torch.jit is deprecated in recent torch; loaded models remain
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(module)


def test_probe_of_a_scripted_model_falls_back_and_leaves_no_hooks():
    inner = nn.Sequential(nn.Linear(64, 32), nn.ReLU())
    model = nn.Sequential(inner, _scripted(nn.Linear(32, 32)))  # hooks refused on the last leaf
    assert chunking.probe(model, torch.rand(64, 64)) is None
    assert not any(m._forward_hooks for m in inner.modules())
    report = audit(_scripted(nn.Linear(64, 3)), _spec([64], n=256))
    assert report.batch_size == 256


def test_out_of_memory_in_a_distance_backs_off_instead_of_failing(monkeypatch):
    from eqaudit.engine import distances

    real = distances._NAMED["l2"]

    def picky(a, b):
        if a.shape[0] > 128:
            raise RuntimeError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real(a, b)

    monkeypatch.setitem(distances._NAMED, "l2", picky)
    model = nn.Linear(64, 3)
    spec = _spec([64], n=512, checks=2)
    backed_off = audit(model, spec)
    assert backed_off.batch_size == 64  # 2 checks x 64 rows fit, the first 256-sample chunk did not
    monkeypatch.setitem(distances._NAMED, "l2", real)
    assert [c.mean for c in backed_off.checks] == [c.mean for c in audit(model, spec, batch_size=64).checks]


def test_no_probe_when_one_block_is_the_chunk_anyway():
    calls = []

    class Counting(nn.Module):
        def forward(self, x):
            calls.append(x.shape[0])
            return x.sum(dim=1, keepdim=True)

    audit(Counting(), _spec([64], n=50, checks=1), noise_floor=False)
    assert calls == [64, 64]  # the base and the fused forward of the only chunk: no probe


def test_a_chunk_holds_a_bounded_amount_of_outputs_on_cpu():
    torch.manual_seed(0)
    decoder = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 12288))  # 48 KiB out per sample
    spec = spec_from_dict({
        "input": {"shape": [16]}, "samples": 1024,
        "checks": [{"name": f"c{i}", "input": {"gain": {"factor": [0.9, 1.1]}}} for i in range(4)],
    })
    report = audit(decoder, spec, noise_floor=False)
    held = chunking.held_bytes(16 * 4, 12288 * 4, 4)
    assert report.batch_size * held <= chunking.CPU_CHUNK_BYTES
    assert report.batch_size == chunking.largest_power_of_two(chunking.CPU_CHUNK_BYTES / held)
    fixed = audit(decoder, spec, batch_size=1024, noise_floor=False)
    assert [c.mean for c in report.checks] == [c.mean for c in fixed.checks]


def test_every_process_gets_a_chunk():
    cpu = torch.device("cpu")
    assert chunking.bounded_chunk(4096, cpu, None, 1, 4096) == 4096
    assert chunking.bounded_chunk(4096, cpu, None, 2, 4096) == 2048
    assert chunking.bounded_chunk(4096, torch.device("cuda"), 10**9, 3, 4096) == 1024  # 1366 -> 1024
    assert chunking.bounded_chunk(4096, cpu, None, 8, 100) == 64  # never below one block
    assert chunking.bounded_chunk(4096, cpu, chunking.CPU_CHUNK_BYTES // 100, 1, 4096) == 64


def test_no_model_call_is_split_below_one_block():
    from eqaudit.engine import forward

    calls: list[int] = []

    def model(x):
        calls.append(x.shape[0])
        return x.sum(dim=1, keepdim=True)

    spec = _spec([4], n=64)
    out = forward.forward_rows(model, torch.rand(1030, 4), spec, "k", 512)
    assert calls == [512, 518] and out.shape == (1030, 1)

    class Item:
        def __init__(self, n):
            self.rows_in_call = n

    sizes = [[it.rows_in_call for it in run] for run in forward.packed([Item(n) for n in (30, 20, 500, 1000, 10)], 512)]
    assert sizes == [[30, 20, 500], [1000, 10]]  # small runs join a neighbour: every call >= 64 rows
    assert [[it.rows_in_call for it in r] for r in forward.packed([Item(600), Item(30)], 512)] == [[600, 30]]


def test_a_model_is_probed_once_for_repeated_audits_and_again_when_it_changes():
    """Audits repeated on one model (a training monitor, the benchmark) do not repeat the probe's
    hooked forward; a model whose parameters change in number or size is probed afresh."""
    calls = []
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
    model.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    spec = _spec([8], n=512, checks=1)
    first = audit(model, spec, noise_floor=False)
    probed = len(calls)
    calls.clear()
    again = audit(model, spec, noise_floor=False)
    assert len(calls) == probed - 1  # the same forwards but the probe's
    assert [c.mean for c in again.checks] == [c.mean for c in first.checks]
    model.append(nn.Linear(2, 3))  # a changed model: probed again
    calls.clear()
    audit(model, spec, noise_floor=False)
    assert len(calls) == probed
