"""How close `eqaudit`'s engine comes to the forward-pass limit, and how it compares with the
original `equivariance-regularizer` package.

For a small CNN (1x28x28, two 3x3 conv layers of 32 channels, pooling, linear head) and an MLP
(64 -> 256 -> 256 -> 10), with K = 4 checks and N sample points, it times in one process per
model, interleaved, the median of R runs of:

  (a) eqaudit   `audit(model, spec)`: draw points, forward once, 4 checks, statistics;
  (b) ideal     one batched forward of the N base points plus one of the N*K transformed points
                (inference mode, inputs made beforehand): the least any method must compute;
  (b') best batch  the same N(1+K) forward passes in calls of the power-of-two batch size that a
                sweep found fastest (inputs made beforehand): the true forward-pass limit on the
                machine, which the single batch of (b) is not on a CPU (its activations spill the
                caches);
  (b'') inputs limit  (b') plus drawing the points and the checks' parameters and applying the
                input transforms, with the zoo alone: the least an engine that makes its own
                inputs must do (a random permutation per sample is not free on a CPU);
  (c) original  `equivariance_regularizer.EquivarianceRegularizer` (0.1.1, from PyPI) computing
                the same four errors over the same N points, one transform per call (it
                recomputes model(x) for every transform), under torch.no_grad().

Beside the times it counts, on CPU, the aten operator calls of one audit at the chunk size the
CUDA policy picks for an 80 GB device (``chunk_cuda_80gb_*``; the random draws on their torch
path, as on CUDA) and of the ideal's two forward passes (``ops_eqaudit_*``, ``ops_ideal_*``): a
device-independent proxy for the kernel launches a GPU would make. ``ops_fused_*`` count the same
audit with each draw's hash one launch, as ``--compile`` runs it on a GPU
(``transforms_zoo.fused_draws``).

Every contender runs with glibc told to serve blocks up to 32 MiB from its heap
(:func:`eqaudit.allocator.steady_allocator`, as the ``eqaudit`` command does): with glibc's
defaults each large activation is mapped afresh and page-faulted in on every call, which made
the best batch run at twice eqaudit's time (``--default-allocator`` times with the defaults).

Ratios come from one run so machine noise cancels: ratio_vs_ideal is the median over rounds of
a / b timed in the same round, speedup_vs_original the median of c / a; the times printed are
medians. Each model is timed in a fresh process (``--same-process``: all in this one, in turn),
so the allocator state one model's runs leave behind does not favour the next model's. Peak
memory of eqaudit is measured at N and 16 N in child processes (CUDA: max_memory_allocated;
CPU: the resident-set high-water mark above the process's level after set-up, with glibc told
to mmap blocks over 64 KiB so that RSS follows the live tensors rather than allocator slack).

    python benchmarks/measure_vs_ideal.py [--device cpu|cuda] [--samples 4096] [--repeats 7] [--json]
                                          [--models cnn,mlp] [--same-process] [--no-memory] [--no-ops]
                                          [--fused-draws]

Targets: ratio_vs_best_batch <= 1.15 on CPU, ops_eqaudit <= 2 ops_ideal + a constant per audit,
ratio_vs_ideal <= 1.10, speedup_vs_original >= 1.5, peak memory at 16 N within 10%
of the peak at N.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eqaudit.engine.chunk import copies_per_sample  # noqa: E402
from eqaudit.engine.chunking import device_chunk, probe  # noqa: E402
from eqaudit.engine.estimator import BLOCK  # noqa: E402
from eqaudit.allocator import steady_allocator  # noqa: E402
from eqaudit.engine.run import audit  # noqa: E402
from eqaudit.spec import spec_from_dict  # noqa: E402
import transforms_zoo  # noqa: E402
from transforms_zoo import fused_draws  # noqa: E402


def make_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(32, 10),
    )


def make_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


CASES: dict[str, dict[str, Any]] = {
    "cnn": {
        "model": make_cnn,
        "shape": [1, 28, 28],
        "checks": [
            {"name": "rot90", "input": "rot90"},
            {"name": "hflip", "input": "hflip"},
            {"name": "shift", "input": {"shift": {"dx": 2, "dy": -1}}},
            {"name": "rotate", "input": {"rotate": {"degrees": [-30, 30]}}},
        ],
    },
    "mlp": {
        "model": make_mlp,
        "shape": [64],
        "checks": [
            {"name": "permute", "input": {"permute": {"dim": -1}}},
            {"name": "flip", "input": {"flip": {"dim": -1}}},
            {"name": "roll", "input": {"roll": {"shift": [1, 5], "dim": -1}}},
            {"name": "gain", "input": {"gain": {"factor": [0.9, 1.1]}}},
        ],
    },
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(case: str, n: int, device: torch.device):
    torch.manual_seed(0)
    c = CASES[case]
    model = c["model"]().to(device).eval()
    # Thresholds far above the errors: the checks pass, so the diagnostics that run only for a
    # failing check (the inverted-output hint) stay out of the timing, as they stay out of the ideal.
    checks = [dict(ch, threshold=1e9) for ch in c["checks"]]
    spec = spec_from_dict({"input": {"shape": c["shape"]}, "samples": n, "checks": checks})
    return model, spec


def run_eqaudit(model: nn.Module, spec, device: torch.device, fused: bool = False) -> Callable[[], None]:
    """The audit; ``fused``: with each draw one compiled kernel (``transforms_zoo.fused_draws``, as
    ``--compile`` runs a GPU audit; compiled in the untimed warm-up call)."""
    def go() -> None:
        with fused_draws(fused):
            audit(model, spec, device=device)
        _sync(device)

    return go


def run_ideal(model: nn.Module, spec, device: torch.device) -> Callable[[], None]:
    n, k = spec.samples, len(spec.checks)
    x = torch.rand(n, *spec.input.shape, device=device)
    xt = torch.rand(n * k, *spec.input.shape, device=device)

    def go() -> None:
        with torch.inference_mode():
            model(x)
            model(xt)
        _sync(device)

    return go


def run_best_batch(model: nn.Module, spec, device: torch.device, batch: int) -> Callable[[], None]:
    """The same N(1+K) forward passes as the ideal, in calls of ``batch`` rows (inputs made
    beforehand): at the best ``batch`` of :func:`best_batch_size`, the forward-pass limit."""
    n, k = spec.samples, len(spec.checks)
    x = torch.rand(n * (1 + k), *spec.input.shape, device=device)

    def go() -> None:
        with torch.inference_mode():
            for i in range(0, x.shape[0], batch):
                model(x[i : i + batch])
        _sync(device)

    return go


def run_inputs_limit(model: nn.Module, spec, device: torch.device, batch: int) -> Callable[[], None]:
    """The best-batch forward passes plus the work no audit can skip: drawing the N points and
    each check's parameters with the zoo's keyed generator and applying each check's input
    transform (no distances, no statistics, no checking): the limit for an engine that must
    make its own inputs, which the best batch's inputs-made-beforehand is not."""
    from transforms_zoo import SampleRNG

    n = spec.samples

    def go() -> None:
        with torch.inference_mode():
            rng = SampleRNG.for_range(spec.seed, 0, n, device)
            x = rng.uniform(*spec.input.shape)
            inputs = [x]
            for check in spec.checks:
                t = check.input
                inputs.append(t.apply(x, t.sample(rng.child(f"check:{check.stream_name}"))))
            for part in inputs:
                for i in range(0, n, batch):
                    model(part[i : i + batch])
        _sync(device)

    return go


def best_batch_size(model: nn.Module, spec, device: torch.device, smallest: int = 8, trials: int = 3) -> int:
    """The power-of-two batch (from ``smallest`` up to all N(1+K) rows) that forwards the N(1+K)
    rows fastest: each size timed ``trials`` times after a warm-up, the sizes interleaved, the
    median kept (one timing per size let a slow spell of the shared machine pick the batch)."""
    rows = spec.samples * (1 + len(spec.checks))
    sizes = [1 << p for p in range(smallest.bit_length() - 1, rows.bit_length()) if 1 << p < rows] + [rows]
    runs = {b: run_best_batch(model, spec, device, b) for b in sizes}
    runs[sizes[0]]()
    times: dict[int, list[float]] = {b: [] for b in sizes}
    for _ in range(trials):
        for b, go in runs.items():
            t0 = time.perf_counter()
            go()
            times[b].append(time.perf_counter() - t0)
    return min(times, key=lambda b: statistics.median(times[b]))


class OpCounter(TorchDispatchMode):
    """Counts the aten operators dispatched while active (a device-independent proxy for the
    kernel launches a GPU would make; views and shape queries included). Those dispatched inside
    :meth:`BlockStats.summaries` are counted apart as ``host``: it reads the statistics tables to
    the host first (one transfer), so on a GPU its operators run on small CPU tensors and
    launch no kernels."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.host = 0
        self.on_host = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.on_host:
            self.host += 1
        else:
            self.ops += 1
        return func(*args, **(kwargs or {}))


def _counting_host(counter: OpCounter):
    """:meth:`BlockStats.summaries` with its operators counted as ``counter.host``."""
    from eqaudit.engine.estimator import BlockStats

    inner = BlockStats.summaries

    def summaries(self, *args, **kwargs):
        counter.on_host = True
        try:
            return inner(self, *args, **kwargs)
        finally:
            counter.on_host = False

    return summaries


def cuda_chunk(model: nn.Module, spec, free_bytes: int = 80 * 10**9) -> int:
    """The chunk the CUDA policy picks for ``spec`` on a device with ``free_bytes`` free."""
    sample = torch.rand(BLOCK, *spec.input.shape)
    measured = probe(model, sample)
    return device_chunk(free_bytes, measured.device_bytes(), spec.samples, copies_per_sample(spec))


def _audit_ops(model: nn.Module, spec, size: int, fused: bool = False) -> OpCounter:
    from unittest import mock

    from eqaudit.engine.estimator import BlockStats

    counter = OpCounter()
    launches = _counted_launches(counter) if fused else contextlib.nullcontext()
    with mock.patch.object(BlockStats, "summaries", _counting_host(counter)), launches, counter:
        audit(model, spec, device="cpu", batch_size=size)
    return counter


@contextlib.contextmanager
def _counted_launches(counter: OpCounter):
    """Each draw's fused kernel (``transforms_zoo.fused_draws``, which ``--compile`` turns on for a
    GPU) counted as the one launch it is when compiled: run eagerly, unseen by the counter."""
    from unittest import mock

    from torch.utils._python_dispatch import _disable_current_modes

    import transforms_zoo.random as zoo_random

    def fused_kernel(kernel, device, shape, probe_args):
        def launch(*args):
            with _disable_current_modes():
                out = kernel(*args)
            counter.ops += 1
            return out
        return launch

    with mock.patch.object(zoo_random, "fused_kernel", fused_kernel):
        yield


def count_ops(case: str, n: int) -> dict[str, int]:
    """Operator calls of one audit at the CUDA chunk for an 80 GB device, counted on CPU with the
    random draws on their torch (CUDA) path, and of the ideal's two forward passes; and, from a
    second count at a quarter of that chunk (four times the chunks), the calls each chunk adds
    (``per_chunk``) and the rest, a constant per audit (``per_audit``), both without the host ops.
    ``fused_*``: the same with each draw's fused kernel one launch (``--compile`` on a GPU)."""
    import transforms_zoo.hash32 as zoo_hash32

    cpu = torch.device("cpu")
    model, spec = build(case, n, cpu)
    size = cuda_chunk(model, spec)
    quarter = max(BLOCK, size // 4)
    saved, zoo_hash32._np = zoo_hash32._np, None
    try:
        audit(model, spec.replace(samples=BLOCK), device=cpu)  # warm-up (lazy set-up)
        audit(model, spec, device=cpu, batch_size=quarter)  # warm-up of the quarter's position keys
        eq = _audit_ops(model, spec, size)
        smaller = _audit_ops(model, spec, quarter)
        fused = _audit_ops(model, spec, size, fused=True)
        fused_smaller = _audit_ops(model, spec, quarter, fused=True)
    finally:
        zoo_hash32._np = saved
    chunks, more = -(-n // size), -(-n // quarter)
    per_chunk = (smaller.ops - eq.ops) // max(1, more - chunks)
    fused_per_chunk = (fused_smaller.ops - fused.ops) // max(1, more - chunks)
    ideal = run_ideal(model, spec, cpu)
    with OpCounter() as ide:
        ideal()
    return {"eqaudit": eq.ops + eq.host, "device": eq.ops, "host": eq.host, "ideal": ide.ops, "chunk": size,
            "chunks": chunks, "per_chunk": per_chunk, "per_audit": eq.ops - chunks * per_chunk,
            "fused_device": fused.ops, "fused_per_chunk": fused_per_chunk}


def run_original(model: nn.Module, spec, device: torch.device) -> Callable[[], None] | None:
    try:
        from equivariance_regularizer import EquivarianceRegularizer
    except ImportError:
        return None
    regs = []
    for check in spec.checks:
        t = check.input  # a zoo transform: a callable on batches
        regs.append(
            EquivarianceRegularizer(
                model, tuple(spec.input.shape), [(lambda y: y, t, 0.0, 1.0)], dist=2, n=spec.samples, num_funcs=1
            )
        )

    def go() -> None:
        with torch.no_grad():
            for reg in regs:
                reg()
        _sync(device)

    return go


def timed_rounds(fns: dict[str, Callable[[], None] | None], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each function, ``repeats`` rounds, the functions interleaved in each
    round (so a slow spell of a shared machine hits every column of the round alike)."""
    for fn in fns.values():  # warm-up (allocator, kernels, caches)
        if fn is not None:
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():  # interleaved
            if fn is None:
                continue
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def round_ratio(times: dict[str, list[float]], num: str, den: str) -> float | None:
    """The median over rounds of ``num / den`` timed in the same round."""
    if not times[num] or not times[den]:
        return None
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


def rounds_child(case: str, n: int, repeats: int, device: str, allocator: bool = True,
                 fused: bool = False) -> dict[str, Any]:
    """:func:`timed_rounds` of one model's three contenders, in a fresh process: the allocator
    state one model leaves behind (the CNN ideal's 1.6 GB batches grow the heap, after which the
    MLP ideal's 16 MB activations are no longer page-faulted in) does not shape the next one's."""
    code = (
        "import sys, json; sys.path.insert(0, %r); "
        "from benchmarks.measure_vs_ideal import _rounds_in_this_process; "
        "print(json.dumps(_rounds_in_this_process(%r, %d, %d, %r, %r, %r)))"
        % (str(ROOT), case, n, repeats, device, allocator, fused)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"timing {case} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _rounds_in_this_process(case: str, n: int, repeats: int, device_name: str, allocator: bool = True,
                            fused: bool = False) -> dict[str, Any]:
    steady = steady_allocator(force=True) if allocator else False
    device = torch.device(device_name)
    model, spec = build(case, n, device)
    best = best_batch_size(model, spec, device)
    rounds = timed_rounds(
        {
            "eqaudit": run_eqaudit(model, spec, device),
            "ideal": run_ideal(model, spec, device),
            "best_batch": run_best_batch(model, spec, device, best),
            "inputs_limit": run_inputs_limit(model, spec, device, best),
            "original": run_original(model, spec, device),
            "eqaudit_fused": run_eqaudit(model, spec, device, fused=True) if fused else None,
        },
        repeats,
    )
    return {"rounds": rounds, "best_batch": best, "steady_allocator": steady}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def peak_memory_child(case: str, n: int, device: str) -> int:
    """Peak bytes used by one audit at n samples, measured in a fresh process."""
    code = (
        "import sys, json; sys.path.insert(0, %r); "
        "from benchmarks.measure_vs_ideal import _peak_in_this_process; "
        "print(json.dumps(_peak_in_this_process(%r, %d, %r)))" % (str(ROOT), case, n, device)
    )
    # glibc keeps freed heap memory in the process, so RSS would count allocator slack; with
    # every block over 64 KiB mmap-ed, RSS follows the live tensors.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return int(json.loads(out.stdout.strip().splitlines()[-1]))


def _peak_in_this_process(case: str, n: int, device_name: str) -> int:
    device = torch.device(device_name)
    model, spec = build(case, n, device)
    small = spec.replace(samples=64)
    audit(model, small, device=device)  # load kernels and allocator pools before the baseline
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        audit(model, spec, device=device)
        return int(torch.cuda.max_memory_allocated() - base)
    base = _rss_kib("VmRSS")
    audit(model, spec, device=device)
    return int(max(0, _rss_kib("VmHWM") - base) * 1024)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    ap.add_argument("--models", default=",".join(CASES), help="comma-separated subset of: " + ", ".join(CASES))
    ap.add_argument("--same-process", action="store_true",
                    help="time every model in this process, one after the other (default: each in a fresh one)")
    ap.add_argument("--no-ops", action="store_true",
                    help="skip the operator counts (device-independent: counted on CPU, slow for the CNN at large N)")
    ap.add_argument("--fused-draws", action="store_true",
                    help="also time the audit with fused draws (transforms_zoo.fused_draws, as --compile on a GPU)")
    ap.add_argument("--default-allocator", action="store_true",
                    help="time with glibc's default malloc options (see eqaudit.allocator)")
    args = ap.parse_args()
    device = torch.device(args.device)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "samples": args.samples,
        "checks": 4,
        "repeats": args.repeats,
    }
    cases = [c for c in args.models.split(",") if c]
    for case in cases:
        if case not in CASES:
            ap.error(f"unknown model {case!r}; choose from {', '.join(CASES)}")
        if args.same_process:
            timed = _rounds_in_this_process(case, args.samples, args.repeats, args.device, not args.default_allocator,
                                            args.fused_draws)
        else:
            timed = rounds_child(case, args.samples, args.repeats, args.device, not args.default_allocator,
                                 args.fused_draws)
        result["steady_allocator"] = timed["steady_allocator"]
        rounds = timed["rounds"]
        t = {k: (statistics.median(v) if v else None) for k, v in rounds.items()}
        result[f"time_eqaudit_{case}_s"] = t["eqaudit"]
        result[f"time_ideal_{case}_s"] = t["ideal"]
        result[f"time_best_batch_{case}_s"] = t["best_batch"]
        result[f"best_batch_{case}"] = timed["best_batch"]
        result[f"time_original_{case}_s"] = t["original"]
        result[f"ratio_vs_ideal_{case}"] = round_ratio(rounds, "eqaudit", "ideal")
        result[f"ratio_vs_best_batch_{case}"] = round_ratio(rounds, "eqaudit", "best_batch")
        result[f"time_inputs_limit_{case}_s"] = t["inputs_limit"]
        result[f"ratio_vs_inputs_limit_{case}"] = round_ratio(rounds, "eqaudit", "inputs_limit")
        result[f"speedup_vs_original_{case}"] = round_ratio(rounds, "original", "eqaudit")
        if args.fused_draws:
            result[f"time_eqaudit_fused_{case}_s"] = t["eqaudit_fused"]
            result[f"ratio_fused_vs_eqaudit_{case}"] = round_ratio(rounds, "eqaudit_fused", "eqaudit")
            result[f"ratio_fused_vs_ideal_{case}"] = round_ratio(rounds, "eqaudit_fused", "ideal")
        if not args.no_ops:
            ops = count_ops(case, args.samples)
            result[f"ops_eqaudit_{case}"] = ops["eqaudit"]
            result[f"ops_ideal_{case}"] = ops["ideal"]
            result[f"ops_device_eqaudit_{case}"] = ops["device"]
            result[f"ops_host_eqaudit_{case}"] = ops["host"]
            result[f"ops_per_chunk_eqaudit_{case}"] = ops["per_chunk"]
            result[f"ops_per_audit_eqaudit_{case}"] = ops["per_audit"]
            result[f"ops_fused_device_eqaudit_{case}"] = ops["fused_device"]
            result[f"ops_fused_per_chunk_eqaudit_{case}"] = ops["fused_per_chunk"]
            result[f"chunk_cuda_80gb_{case}"] = ops["chunk"]
            result[f"chunks_cuda_80gb_{case}"] = ops["chunks"]
        if not args.no_memory:
            small = peak_memory_child(case, args.samples, args.device)
            large = peak_memory_child(case, args.samples * 16, args.device)
            result[f"peak_memory_{case}_n{args.samples}_bytes"] = small
            result[f"peak_memory_{case}_n{args.samples * 16}_bytes"] = large
            result[f"peak_memory_ratio_{case}"] = large / small if small else None
    if args.json:
        print(json.dumps(result, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"eqaudit vs ideal vs original — {result['device']}, N={args.samples}, K=4")
    for col in ["model", "eqaudit (s)", "ideal (s)", "original (s)", "eqaudit/ideal", "eqaudit/best batch",
                "original/eqaudit", "ops eqaudit/ideal", "peak mem 16N / N"]:
        table.add_column(col, justify="right")
    for case in cases:
        orig = result[f"time_original_{case}_s"]
        mem = result.get(f"peak_memory_ratio_{case}")
        table.add_row(
            case,
            f"{result[f'time_eqaudit_{case}_s']:.4f}",
            f"{result[f'time_ideal_{case}_s']:.4f}",
            f"{orig:.4f}" if orig else "not installed",
            f"{result[f'ratio_vs_ideal_{case}']:.3f}",
            f"{result[f'ratio_vs_best_batch_{case}']:.3f} ({result[f'best_batch_{case}']} rows)",
            f"{result[f'speedup_vs_original_{case}']:.2f}" if orig else "-",
            (f"{result[f'ops_eqaudit_{case}']} ({result[f'ops_fused_device_eqaudit_{case}']} fused, device) / "
             f"{result[f'ops_ideal_{case}']}") if f"ops_eqaudit_{case}" in result else "-",
            f"{mem:.3f}" if mem else "-",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
