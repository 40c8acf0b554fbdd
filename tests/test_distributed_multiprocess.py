"""Two real processes on CPU (gloo), started as torchrun starts them (MASTER_ADDR, MASTER_PORT,
RANK, WORLD_SIZE, LOCAL_RANK, a free port from the OS), against one process.

The jobs below run twice: in this process (the single-process reference) and in two worker
processes that execute this file as a script. One launch runs every job, so the process start
and the group's set-up are paid once; each launch is killed after a timeout, so a collective
that hangs fails the tests instead of blocking CI.
"""

from __future__ import annotations

import atexit
import faulthandler
import json
import os
import socket
import subprocess
import sys
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from eqaudit.engine import run
from eqaudit.engine.chunking import device_chunk, probe
from eqaudit.engine.distributed import current_world, least_across, merged_failures
from eqaudit.engine.estimator import BLOCK
from eqaudit.engine.sampling import PointSampler
from eqaudit.spec import spec_from_dict

HERE = Path(__file__).resolve()
LAUNCH_TIMEOUT_S = 90
GB = 1 << 30
FREE_BYTES = {0: 80 * GB, 1: 64 << 20}  # fake free device memory of each rank

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="this torch build has no torch.distributed with the gloo backend")


# -- the jobs (each returns what the tests compare; ``work`` holds their data files) ---------------

def _cnn(head: bool) -> nn.Module:
    torch.manual_seed(0)
    pool = [nn.AdaptiveAvgPool2d(1), nn.Flatten()] if head else []
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, 2, 3, padding=1), *pool)


def _report(model: Any, spec: dict[str, Any], **kw: Any) -> dict[str, Any]:
    out = run.audit(model, spec_from_dict(spec), device="cpu", **kw).to_dict()
    del out["elapsed_s"]
    return out


def _per_channel(samples: int, names: list[str]) -> dict[str, Any]:
    return {"input": {"shape": [1, 6, 6]}, "samples": samples, "seed": 1,
            "layers": {"names": names, "per_channel": True},
            "checks": [{"name": "flip", "both": "hflip"}, {"name": "turn", "both": "rot90"}]}


def job_checks(work: Path) -> dict[str, Any]:
    """A random transform, a finite group, a worst-of check and a plain flip; 200 samples: four
    chunks of one block split between the processes, the last one partial; quantiles kept."""
    spec = {"input": {"shape": [1, 6, 6]}, "samples": 200, "seed": 3, "checks": [
        {"name": "rot", "input": {"rotate": {"degrees": [-30, 30]}}},
        {"name": "c4", "group": "C4"},
        {"name": "worst", "input": {"shift": {"dx": [-1, 1], "dy": [-1, 1]}}, "worst_of": 3},
        {"name": "flip", "input": "hflip"}]}
    return _report(_cnn(head=True), spec)


def job_channels(work: Path) -> dict[str, Any]:
    return _report(_cnn(head=False), _per_channel(200, ["0", "2"]))


def job_channels_idle_rank(work: Path) -> dict[str, Any]:
    """64 samples: one chunk, so the second process folds nothing (it had no channel sums to add)."""
    return _report(_cnn(head=False), _per_channel(64, ["0", "2"]))


NEGATIVE = '''
import torch


def below_zero(a, b):
    """A signed score, not a distance: every value is negative."""
    return -torch.linalg.vector_norm((a - b).flatten(1), dim=1) - 1.0
'''


def job_negative_distance(work: Path) -> dict[str, Any]:
    spec = {"input": {"shape": [1, 6, 6]}, "samples": 256, "seed": 1,
            "checks": [{"name": "flip", "input": "hflip", "distance": f"{work / 'signed.py'}:below_zero"}]}
    return _report(_cnn(head=True), spec, batch_size=64)


PICKY = '''
import torch


def picky(a, b):
    """l2, except on large outputs, where it fails, naming their size: each chunk its own message."""
    m = float(a.abs().max())
    if m > 10:
        raise ValueError(f"outputs too large for this distance: {int(m)}")
    return torch.linalg.vector_norm((a - b).flatten(1), dim=1)
'''


def _picky_spec(work: Path, data: str) -> dict[str, Any]:
    return {"model": {"factory": "torch.nn:Identity"},
            "input": {"data": f"{work / 'points.safetensors'}:{data}", "sampling": "sequential"}, "samples": 256,
            "checks": [{"name": "picky", "input": "hflip", "distance": f"{work / 'picky.py'}:picky"},
                       {"name": "flip", "input": "vflip"}]}


def job_fails_in_one_process(work: Path) -> dict[str, Any]:
    """Chunks of 64: only the second one (the second process's) holds large outputs."""
    return _report(None, _picky_spec(work, "one"), batch_size=64)


def job_fails_in_both_processes(work: Path) -> dict[str, Any]:
    """Chunks of 64: the second (second process) and the third (first process) fail, each with its
    own message; one process, measuring in order, reports the second chunk's."""
    return _report(None, _picky_spec(work, "both"), batch_size=64)


def job_least_across(work: Path, free_bytes: dict[int, int | None] = FREE_BYTES) -> dict[str, Any]:
    """Each rank its own fake free device memory: the least of them, and the CUDA chunk size the
    engine derives from it (the probe runs on CPU; ``free_device_bytes`` is the seam)."""
    world = current_world()
    free = free_bytes[world.rank]
    saved = run.free_device_bytes
    run.free_device_bytes = lambda dev: free  # type: ignore[assignment]
    try:
        spec = spec_from_dict({"input": {"shape": [64]}, "samples": 65536, "checks": [{"name": "flip",
                                                                                       "input": {"flip": {"dim": -1}}}]})
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
        sampler = PointSampler(spec, torch.device("cpu"), torch.float32)
        measured = probe(model, torch.rand(BLOCK, *sampler.shape))
        target = SimpleNamespace(dev=torch.device("cuda"), plan=None, world=world)
        chunk, _rows = run._chunk_size(target, spec, sampler, None, measured)
    finally:
        run.free_device_bytes = saved  # type: ignore[assignment]
    return {"least": least_across(free, world), "chunk": chunk, "device_bytes": measured.device_bytes()}


def job_least_across_one_unknown(work: Path) -> dict[str, Any]:
    """Rank 1's driver cannot say how much memory is free: both processes still join the gather
    (else rank 0 waits for ever) and cut the chunk from rank 0's figure."""
    return job_least_across(work, {0: 80 * GB, 1: None})


def job_merged_failures(work: Path) -> dict[str, Any]:
    world = current_world()
    failed = [{0: "late", 1: "only in rank 0"}, {0: "early", 2: "only in rank 1"}][world.rank]
    at = [{0: 128, 1: 0}, {0: 64, 2: 192}][world.rank]
    return {"by_index": merged_failures(failed, world, at), "by_rank": merged_failures(failed, world)}


class OutOfMemoryInRankOne(nn.Module):
    """A linear model that runs out of memory (as CUDA says it) above one block of rows, in the
    process of rank 1 only."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(36, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if os.environ.get("RANK") == "1" and x.shape[0] > BLOCK:
            raise RuntimeError("CUDA out of memory (simulated)")
        return self.lin(x.flatten(1))


def job_out_of_memory_then_more_samples(work: Path) -> dict[str, Any]:
    spec = {"input": {"shape": [1, 6, 6]}, "samples": 256, "seed": 1,
            "checks": [{"name": "flip", "input": "hflip", "threshold": 100}]}
    return _report(OutOfMemoryInRankOne(), spec, precision=1e-9, max_samples=1024, noise_floor=False)


def job_channels_more_samples(work: Path) -> dict[str, Any]:
    """--precision EPS from 100 samples: the partial block (64..99) is redone whole in the next round."""
    return _report(_cnn(head=False), _per_channel(100, ["0"]), batch_size=64, precision=1e-9, max_samples=256)


def job_layers_all_idle_rank(work: Path) -> dict[str, Any]:
    spec = {"input": {"shape": [1, 6, 6]}, "samples": 64, "seed": 1, "layers": "all",
            "checks": [{"name": "flip", "both": "hflip"}]}
    return _report(_cnn(head=False), spec)


JOBS = {name[4:]: fn for name, fn in dict(globals()).items() if name.startswith("job_")}
#: Jobs that need a process group (no single-process reference).
COLLECTIVE_ONLY = {"least_across", "least_across_one_unknown", "merged_failures"}


def _write_inputs(work: Path) -> None:
    from safetensors.torch import save_file

    (work / "signed.py").write_text(NEGATIVE)
    (work / "picky.py").write_text(PICKY)
    g = torch.Generator().manual_seed(0)
    one, both = torch.rand(256, 1, 4, 4, generator=g), torch.rand(256, 1, 4, 4, generator=g)
    one[64:128] *= 100  # the second chunk
    both[64:128] *= 100
    both[128:192] *= 1000  # the third chunk, another message
    save_file({"one": one, "both": both}, str(work / "points.safetensors"))


def _worker(work: Path) -> None:
    """One process of the launch: every job, then the exit handlers eqaudit registered (what the
    interpreter runs on exit) and whether the process group is still up after them."""
    registered, register = [], atexit.register
    atexit.register = lambda fn, *a, **kw: registered.append(fn) or register(fn, *a, **kw)  # type: ignore[assignment]
    world = current_world()
    atexit.register = register  # type: ignore[assignment]
    faulthandler.dump_traceback_later(LAUNCH_TIMEOUT_S - 10, exit=True)  # a hang: where each process waits
    results: dict[str, Any] = {}
    for name, fn in JOBS.items():
        print(f"rank {world.rank}: job {name}", file=sys.stderr, flush=True)
        try:
            results[name] = fn(work)
        except Exception:  # raised alike in both processes (else the other one waits: the timeout)
            results[name] = {"raised": traceback.format_exc()}
    for fn in registered:
        fn()
    results["group_left_at_exit"] = bool(registered) and not torch.distributed.is_initialized()
    (work / f"rank{world.rank}.json").write_text(json.dumps(results))


# -- launching ----------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(argv: list[str], cwds: list[Path], timeout: float = LAUNCH_TIMEOUT_S) -> list[tuple[int, str, str]]:
    """Run ``argv`` in two processes with torchrun's environment, one per ``cwds`` entry; (exit
    code, stdout, stderr) of each. Both are killed after ``timeout`` seconds (a hung collective)."""
    port, procs, logs = _free_port(), [], []
    clean = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    try:
        for rank, cwd in enumerate(cwds):
            env = clean | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                           "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0",
                           "OMP_NUM_THREADS": "1"}  # torchrun's default with several processes
            logs.append((open(cwd / f".rank{rank}.out", "w+"), open(cwd / f".rank{rank}.err", "w+")))
            procs.append(subprocess.Popen(argv, cwd=cwd, env=env, stdout=logs[-1][0], stderr=logs[-1][1]))
        try:
            codes = [p.wait(timeout=timeout) for p in procs]
        except subprocess.TimeoutExpired:
            codes = None
        return _outputs(codes, logs, timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for out, err in logs:
            out.close()
            err.close()


def _outputs(codes: list[int] | None, logs: list[tuple[Any, Any]], timeout: float) -> list[tuple[int, str, str]]:
    texts = []
    for out, err in logs:
        out.seek(0)
        err.seek(0)
        texts.append((out.read(), err.read()))
    if codes is None:
        pytest.fail(f"two processes still running after {timeout} s (a collective waits for a process that does "
                    "not join it):\n" + "\n".join(f"rank {r} stderr: {err[-3000:]}" for r, (_o, err) in enumerate(texts)))
    return [(code, out, err) for code, (out, err) in zip(codes, texts)]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("distributed")
    _write_inputs(path)
    return path


@pytest.fixture(scope="module")
def ranks(work: Path) -> list[dict[str, Any]]:
    """Every job's result in each of the two processes."""
    results = launch([sys.executable, str(HERE), str(work)], [work, work])
    for rank, (code, _out, err) in enumerate(results):
        assert code == 0, f"rank {rank} exited with {code}:\n{err[-4000:]}"
    return [json.loads((work / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def single(work: Path) -> dict[str, Any]:
    """Every job's result in this one process (no process group)."""
    assert not torch.distributed.is_initialized()
    return {name: json.loads(json.dumps(fn(work))) for name, fn in JOBS.items() if name not in COLLECTIVE_ONLY}


def _same_in_both(ranks: list[dict[str, Any]], job: str) -> dict[str, Any]:
    for rank in ranks:
        assert "raised" not in rank[job], rank[job]["raised"]
    assert ranks[0][job] == ranks[1][job], f"{job}: the two processes report different things"
    return ranks[0][job]


# -- the tests ------------------------------------------------------------------------------------

def test_two_processes_report_the_single_process_numbers(ranks, single):
    split, alone = _same_in_both(ranks, "checks"), single["checks"]
    assert [c["name"] for c in split["checks"]] == ["rot", "c4", "worst", "flip"]
    assert split["checks"] == alone["checks"]  # every figure, bit for bit: n, mean, std, max, quantiles, CI
    for c in split["checks"]:
        assert c["n"] == 200 and c["quantile_n"] == 200 and c["p99"] >= c["p50"] > 0 and "error" not in c
    assert split["samples"] == alone["samples"] == 200 and split["noise_floor"] == alone["noise_floor"]
    assert "samples split across 2 processes" in split["notes"]
    assert "samples split across 2 processes" not in alone["notes"]


def _channel_rows(report: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(c["name"], row["name"], row) for c in report["checks"] for row in c["layers"]]


def _assert_same_channels(split: dict[str, Any], alone: dict[str, Any]) -> None:
    """The layer rows bit for bit; the per-channel figures to rounding: their sums are folded chunk
    by chunk, so the split (like ``--batch-size`` in one process) moves only their last bits."""
    rows, reference = _channel_rows(split), _channel_rows(alone)
    assert [r[:2] for r in rows] == [r[:2] for r in reference] and rows
    for (check, layer, row), (_c, _l, ref) in zip(rows, reference):
        assert {k: v for k, v in row.items() if k != "channels"} == {k: v for k, v in ref.items() if k != "channels"}
        assert row["channels"].keys() == ref["channels"].keys()
        for field, values in row["channels"].items():
            want = ref["channels"][field]
            assert [v is None for v in values] == [v is None for v in want], (check, layer, field)
            assert [v for v in values if v is not None] == pytest.approx(
                [v for v in want if v is not None], rel=1e-12, abs=1e-300), (check, layer, field)


def test_per_channel_figures_match_one_process(ranks, single):
    split = _same_in_both(ranks, "channels")
    _assert_same_channels(split, single["channels"])
    channels = [row["channels"] for _c, _l, row in _channel_rows(split)]
    assert [len(ch["error"]) for ch in channels] == [3, 2, 3, 2]  # conv 0: 3 channels, conv 2: 2
    assert all(v > 0 for ch in channels for v in ch["error"])  # random weights: nothing is symmetric


def test_per_channel_figures_when_one_process_folds_nothing(ranks, single):
    # Rank 1 got no chunk: it had no sums to exchange, and rank 0 waited in all_reduce until the
    # peer hung up (RuntimeError: Connection closed by peer) before the pairs were gathered first.
    split = _same_in_both(ranks, "channels_idle_rank")
    _assert_same_channels(split, single["channels_idle_rank"])
    assert all(row["n"] == 64 for _c, _l, row in _channel_rows(split))


def test_negative_maxima_survive_the_reduction(ranks, single):
    # The max table was reduced with -1 standing for "not filled here": a negative maximum became null.
    split, alone = _same_in_both(ranks, "negative_distance"), single["negative_distance"]
    assert alone["checks"][0]["max"] is not None and alone["checks"][0]["max"] < -1.0
    assert split["checks"] == alone["checks"]


def test_least_free_memory_across_processes_sizes_every_chunk(ranks):
    # Rank 0 alone would cut far larger chunks (80 GB free): both take the smaller rank's figure.
    split = _same_in_both(ranks, "least_across")
    assert split["least"] == min(FREE_BYTES.values())
    assert split["chunk"] == device_chunk(min(FREE_BYTES.values()), split["device_bytes"], 65536, 1)
    assert split["chunk"] < device_chunk(max(FREE_BYTES.values()), split["device_bytes"], 65536, 1) // 2


def test_a_process_without_a_free_memory_figure_still_joins_the_gather(ranks):
    split = _same_in_both(ranks, "least_across_one_unknown")
    assert split["least"] == 80 * GB
    # rank 0's figure gives one chunk of all 65536 samples; two processes get one chunk each
    assert device_chunk(80 * GB, split["device_bytes"], 65536, 1) == 65536 and split["chunk"] == 32768


def test_merged_failures_keep_the_earliest_chunks_message(ranks):
    merged = _same_in_both(ranks, "merged_failures")
    assert merged["by_index"] == {"0": "early", "1": "only in rank 0", "2": "only in rank 1"}
    assert merged["by_rank"] == {"0": "late", "1": "only in rank 0", "2": "only in rank 1"}


def test_a_check_failing_in_one_process_is_an_error_row_in_both(ranks, single):
    split, alone = _same_in_both(ranks, "fails_in_one_process"), single["fails_in_one_process"]
    assert "outputs too large for this distance: 99" in alone["checks"][0]["error"]
    assert split["checks"] == alone["checks"]
    assert "error" not in split["checks"][1] and split["checks"][1]["n"] == 256


def test_a_check_failing_in_both_processes_reports_the_first_chunks_message(ranks, single):
    split, alone = _same_in_both(ranks, "fails_in_both_processes"), single["fails_in_both_processes"]
    assert "outputs too large for this distance: 99" in alone["checks"][0]["error"]
    assert split["checks"] == alone["checks"]


def test_out_of_memory_in_one_process_then_more_samples(ranks, single):
    split, alone = _same_in_both(ranks, "out_of_memory_then_more_samples"), single["out_of_memory_then_more_samples"]
    assert split["checks"] == alone["checks"]


def test_per_channel_figures_over_precision_rounds(ranks, single):
    split = _same_in_both(ranks, "channels_more_samples")
    _assert_same_channels(split, single["channels_more_samples"])


def test_layers_all_rows_in_a_process_without_chunks(ranks, single):
    split, alone = _same_in_both(ranks, "layers_all_idle_rank"), single["layers_all_idle_rank"]
    assert [row["name"] for row in alone["checks"][0]["layers"]] == ["0", "1", "2"]
    assert split["checks"] == alone["checks"]


def test_the_process_group_is_destroyed_at_exit(ranks):
    # Left to interpreter shutdown, gloo's threads aborted a process now and then (SIGABRT after
    # the report was written), and torchrun called the run failed.
    assert ranks[0]["group_left_at_exit"] and ranks[1]["group_left_at_exit"]


SPEC = """model: {factory: torch.nn:Identity}
input: {shape: [1, 4, 4]}
samples: 128
checks:
  - {name: flip, input: hflip, threshold: 10}
"""


def test_rank_zero_alone_prints_and_writes(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    cwds = [tmp_path / "rank0", tmp_path / "rank1"]
    for cwd in cwds:
        cwd.mkdir()
    # Relative output paths: each process would write into its own working directory.
    results = launch([sys.executable, "-m", "eqaudit", "measure", "--spec", str(spec), "--device", "cpu",
                      "--json", "r.json", "--markdown", "r.md"], cwds)
    assert [code for code, _out, _err in results] == [0, 0], [err[-2000:] for _c, _o, err in results]
    assert sorted(p.name for p in cwds[0].iterdir() if not p.name.startswith(".")) == ["r.json", "r.md"]
    assert [p.name for p in cwds[1].iterdir() if not p.name.startswith(".")] == []
    assert "flip" in results[0][1] and results[1][1] == ""
    report = json.loads((cwds[0] / "r.json").read_text())
    assert report["checks"][0]["n"] == 128 and "samples split across 2 processes" in report["notes"]


if __name__ == "__main__":  # one process of a launch (see ``launch``)
    _worker(Path(sys.argv[1]))
