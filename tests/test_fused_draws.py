"""Fused draws (``transforms_zoo.fused_draws``, which ``--compile`` turns on for a GPU): each draw's
hash as one compiled kernel, with the eager path's bits, checked before its first use, and left
out with a warning where it does not compile or disagrees. Compiled here by torch's CPU backend
(the tests skip where it cannot compile); the CUDA test skips without a GPU."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import transforms_zoo.fused as fused
import transforms_zoo.hash32 as zoo_hash32
from eqaudit.engine import run
from eqaudit.engine.run import audit
from eqaudit.spec import spec_from_dict
from transforms_zoo import SampleRNG, fused_draws
from transforms_zoo.fused import fused_draws_enabled, fused_kernel


@pytest.fixture(scope="module")
def compiles() -> None:
    """Skip where torch.compile cannot build CPU kernels (no C++ compiler)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ok = torch.equal(torch.compile(lambda x: x * 3 + 1)(torch.arange(4)), torch.arange(4) * 3 + 1)
    except Exception:
        ok = False
    if not ok:
        pytest.skip("torch.compile cannot build CPU kernels here")


@pytest.fixture(autouse=True)
def _fresh_verdicts():
    fused.forget_verdicts()
    yield
    fused.forget_verdicts()


def _draws(start: int = 100, stop: int = 1124) -> list[torch.Tensor]:
    """Every kind of draw, of shapes with a dimension of 1 and above it."""
    rng = SampleRNG.for_range(7, start, stop)
    one = SampleRNG.for_range(7, start, start + 1)
    return [
        rng.uniform(3, 5), rng.child("a").uniform(2, low=-1.0, high=2.0), rng.uniform(),
        rng.uniform(4, dtype=torch.float64), rng.uniform(2, dtype=torch.float16),
        rng.integers(-3, 9, 2), rng.integers(0, 5), rng.permutation(64), rng.choice(2, 5), rng.words(),
        rng.normal(6), rng.select(torch.arange(0, stop - start, 3)).uniform(7),
        SampleRNG.from_keys(rng.words()).uniform(4), one.uniform(3), one.uniform(), one.permutation(4),
    ]


@pytest.mark.parametrize("inference", [False, True])
def test_fused_draws_give_the_eager_bits(compiles, inference):
    with torch.inference_mode(inference):
        want = _draws()
        with fused_draws():
            got = _draws()
            assert fused_draws_enabled()
    assert len(fused._VERDICTS) >= 6 and all(fused._VERDICTS.values())  # the kernels ran, in every class
    for a, b in zip(want, got):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_indices_from_2_31_on_keep_their_eager_keys(compiles):
    for start in (2**31 - 64, 2**32 - 10, 2**40):
        want = _draws(start, start + 200)
        with fused_draws():
            got = _draws(start, start + 200)
        assert all(torch.equal(a, b) for a, b in zip(want, got))


def test_outside_the_block_under_a_dispatch_mode_and_for_empty_draws_the_eager_path_runs():
    kernel, probe = zoo_hash32._hashed_words, zoo_hash32._probe_keys
    assert fused_kernel(kernel, torch.device("cpu"), (4, 3), probe) is None
    with fused_draws(), fused_draws(False):
        assert fused_kernel(kernel, torch.device("cpu"), (4, 3), probe) is None
    with fused_draws():
        assert fused_kernel(kernel, torch.device("cpu"), (0, 3), probe) is None
        with TorchDispatchMode():  # an operator counter sees the eager operators only
            assert fused_kernel(kernel, torch.device("cpu"), (4, 3), probe) is None
    assert not fused._VERDICTS  # nothing was compiled


def test_a_kernel_that_disagrees_is_left_out_with_a_warning(monkeypatch):
    monkeypatch.setattr(fused.torch, "compile", lambda fn, **_: lambda *args: fn(*args) + 1)
    want = _draws()
    with fused_draws(), pytest.warns(RuntimeWarning, match="disagrees with the eager path on cpu"):
        got = _draws()
    assert all(torch.equal(a, b) for a, b in zip(want, got))
    assert fused._VERDICTS and not any(fused._VERDICTS.values())


def test_a_kernel_that_does_not_compile_is_left_out_with_a_warning(monkeypatch):
    def broken(fn, **_):
        def call(*args):
            raise RuntimeError("no C++ compiler\nthe rest of a long message")
        return call

    monkeypatch.setattr(fused.torch, "compile", broken)
    want = _draws()
    with fused_draws(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _draws()
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert messages and all("does not compile on cpu (no C++ compiler)" in m for m in messages)
    assert len(messages) == len(fused._VERDICTS)  # once per kernel and class of shape, not per draw
    assert all(torch.equal(a, b) for a, b in zip(want, got))


def _spec(samples: int = 512):
    return spec_from_dict({
        "input": {"shape": [1, 8, 8]}, "samples": samples, "seed": 3,
        "checks": [{"name": "rot", "input": {"rotate": {"degrees": [-30, 30]}}},
                   {"name": "shift", "input": {"shift": {"dx": [-2, 2], "dy": [-1, 1]}}},
                   {"name": "perm", "input": {"permute": {"dim": -1}}},
                   {"name": "noise", "input": {"gaussian_noise": {"std": 0.1}}},
                   {"name": "g", "input": {"gain": {"factor": [0.9, 1.1]}}}],
    })


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(256, 5))


def _figures(report) -> str:
    """The report's JSON without its one timing."""
    out = report.to_dict()
    out.pop("elapsed_s")
    return json.dumps(out)


def test_an_audit_with_fused_draws_reports_the_same_numbers(compiles):
    model, spec = _model(), _spec()
    want = audit(model, spec, batch_size=128)
    with fused_draws():
        got = audit(model, spec, batch_size=128)
    assert _figures(got) == _figures(want)


def test_compile_fuses_the_draws_off_the_cpu_only():
    for compile_, device, on in ((True, "cuda", True), (True, "cpu", False), (False, "cuda", False)):
        with run._draws(compile_, torch.device(device)):
            assert fused_draws_enabled() is on


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_draws_on_cuda_give_the_eager_and_cpu_bits():
    rng = SampleRNG.for_range(7, 1000, 5000, "cuda")
    with fused_draws():
        got = [rng.uniform(5, 3), rng.permutation(10), rng.uniform(dtype=torch.float64), rng.integers(0, 9, 4)]
    want = [rng.uniform(5, 3), rng.permutation(10), rng.uniform(dtype=torch.float64), rng.integers(0, 9, 4)]
    on_cpu = SampleRNG.for_range(7, 1000, 5000, "cpu").uniform(5, 3)
    assert all(torch.equal(a, b) for a, b in zip(got, want)) and torch.equal(got[0].cpu(), on_cpu)
    assert fused._VERDICTS and all(fused._VERDICTS.values())
    model, spec = _model().cuda(), _spec()
    plain = audit(model, spec, batch_size=128)
    with fused_draws():
        assert _figures(audit(model, spec, batch_size=128)) == _figures(plain)
