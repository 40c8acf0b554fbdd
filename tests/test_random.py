"""The keyed counter-based generator: what a draw depends on, stream independence, uniformity."""

from __future__ import annotations

import math

import pytest
import torch

from transforms_zoo import SampleRNG
from transforms_zoo import hash32 as h32
from transforms_zoo import random as zr


def test_a_draw_depends_only_on_seed_stream_and_index():
    whole = SampleRNG.for_range(7, 0, 256).child("a").uniform(5)
    parts = torch.cat([SampleRNG.for_range(7, s, s + 64).child("a").uniform(5) for s in range(0, 256, 64)])
    picked = SampleRNG(7, torch.tensor([200, 3, 17])).child("a").uniform(5)
    assert torch.equal(whole, parts)
    assert torch.equal(picked, whole[[200, 3, 17]])


def test_the_fast_path_for_small_indices_equals_the_general_one():
    idx = torch.cat([torch.arange(1000, 1300), torch.arange(2**31 - 5, 2**31 + 5), torch.arange(2**32 - 5, 2**32)])
    fast = SampleRNG(3, idx, below_2_32=True)
    general = SampleRNG(3, idx)
    assert torch.equal(fast._key, general._key)
    # indices past 2**32 take the high word into account (no wrap-around onto small indices)
    far = SampleRNG(3, idx + 2**32)
    assert not torch.equal(far._key, general._key)
    small = torch.arange(2**31 - 300, 2**31)  # every index its own int32 word
    assert torch.equal(SampleRNG(3, small, below_2_31=True)._key, SampleRNG(3, small)._key)
    for start, stop in [(0, 64), (2**31 - 64, 2**31), (2**31 - 32, 2**31 + 32), (2**32 - 32, 2**32 + 32)]:
        index = torch.arange(start, stop)
        assert torch.equal(SampleRNG.for_range(3, start, stop)._key, SampleRNG(3, index)._key), (start, stop)


def test_children_are_distinct_streams_and_child_costs_no_tensor_work():
    rng = SampleRNG.for_range(0, 0, 4096)
    a, b = rng.child("a"), rng.child("b")
    assert a._key is rng._key  # a stream is a number folded into the position keys
    ua, ub = a.uniform(), b.uniform()
    assert not torch.equal(ua, ub)
    corr = torch.corrcoef(torch.stack([ua, ub]))[0, 1]
    assert abs(float(corr)) < 4 / math.sqrt(4096)
    assert torch.equal(rng.child("a").child("c").uniform(), a.child("c").uniform())


def test_draw_kinds_of_one_stream_are_not_shifted_copies():
    # Element p of one kind of draw must not repeat element p' of another in the same stream
    # (position keys of 8 p + kind never coincide).
    rng = SampleRNG.for_range(1, 0, 512)
    bits = [rng._bits((16,), salt) for salt in range(zr._SALTS)]
    flat = torch.cat([b.reshape(-1) for b in bits])
    assert flat.unique().numel() > flat.numel() - 8  # only chance 32-bit collisions
    with pytest.raises(ValueError):
        rng._bits((4,), zr._SALTS)


def test_uniform_moments_and_range():
    u = SampleRNG.for_range(5, 0, 1 << 15).uniform(4, dtype=torch.float64)
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert float(u.mean()) == pytest.approx(0.5, abs=4 * math.sqrt(1 / 12 / u.numel()))
    assert float(u.var()) == pytest.approx(1 / 12, rel=0.02)
    v = SampleRNG.for_range(5, 0, 4096).uniform(3, low=-2.0, high=6.0)
    assert float(v.min()) >= -2.0 and float(v.max()) < 6.0


def test_integers_cover_the_range_evenly():
    k = SampleRNG.for_range(9, 0, 60000).integers(-3, 3)
    counts = torch.bincount((k + 3).reshape(-1), minlength=6).double()
    expected = k.numel() / 6
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert int(k.min()) == -3 and int(k.max()) == 2
    assert chi2 < 20.5  # 5 degrees of freedom, p ~ 0.001


def test_permutations_are_uniform_and_keyed_draws_replay():
    rng = SampleRNG.for_range(2, 0, 24000)
    perms = rng.permutation(3)
    code = perms[:, 0] * 9 + perms[:, 1] * 3 + perms[:, 2]
    counts = torch.bincount(code, minlength=27)[[5, 7, 11, 15, 19, 21]].double()
    assert int(counts.sum()) == 24000  # every row is a permutation of 0, 1, 2
    chi2 = float(((counts - 4000) ** 2 / 4000).sum())
    assert chi2 < 20.5
    words = rng.child("k").words()
    assert words.shape == (24000,) and int(words.min()) >= 0 and int(words.max()) < 2**32
    again = SampleRNG.from_keys(words[100:200], 11).permutation(8)
    assert torch.equal(again, SampleRNG.from_keys(words, 11).permutation(8)[100:200])


def test_position_key_cache_is_bounded_in_elements_and_entries(monkeypatch):
    monkeypatch.setattr(zr, "_POSITION_KEY_ELEMENTS", 1000)
    zr.clear_position_keys()
    rng = SampleRNG.for_range(0, 0, 2)
    for s in range(40):
        rng.child(s).uniform(100)
    assert sum(t.numel() for t in zr._POSITION_KEYS.values()) <= 1000
    assert zr._POSITION_KEY_TOTAL == sum(t.numel() for t in zr._POSITION_KEYS.values())
    # a stream per fine-tune step: entries stay bounded however many steps run
    monkeypatch.setattr(zr, "_POSITION_KEY_ELEMENTS", 1 << 23)
    for step in range(3 * zr._POSITION_KEY_ENTRIES):
        rng.child(f"step:{step}").uniform()
    assert len(zr._POSITION_KEYS) <= zr._POSITION_KEY_ENTRIES
    first = rng.child("a").uniform(7)
    zr.clear_position_keys()
    assert torch.equal(rng.child("a").uniform(7), first)  # the cache never changes a draw


def test_the_int32_hash_is_lowbias32_on_unsigned_words():
    values = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 0x9E3779B9] + torch.randint(
        0, 2**32, (200,), generator=torch.Generator().manual_seed(0)).tolist()
    x = torch.tensor(values, dtype=torch.int64)
    got = h32._to_unsigned(h32._mix32_(h32._to_word(x))).tolist()
    assert got == [h32._mix_int(v) for v in values]
    assert h32._to_unsigned(h32._to_word(x)).tolist() == values  # exact round trip


@pytest.mark.parametrize("numpy_path", [True, False])
def test_the_hash_is_the_same_on_the_numpy_and_torch_paths(monkeypatch, numpy_path):
    if not numpy_path:
        monkeypatch.setattr(h32, "_np", None)
    elif h32._np is None:
        pytest.skip("numpy cannot view tensors here")
    values = [0, 1, 2**31 - 1, 2**31, 2**32 - 1] + list(range(1000, 1100))
    x = h32._to_word(torch.tensor(values, dtype=torch.int64))
    view = x[::2]  # in place through a strided view too
    h32._mix32_(view)
    want = [h32._mix_int(v) if i % 2 == 0 else v for i, v in enumerate(values)]
    assert h32._to_unsigned(x).tolist() == want


@pytest.mark.parametrize("numpy_path", [True, False])
@pytest.mark.parametrize("k", [1, 2, 3, 64, 100])
def test_row_argsort_is_torchs_stable_sort_ties_included(monkeypatch, k, numpy_path):
    if not numpy_path:
        monkeypatch.setattr(h32, "_np", None)
    g = torch.Generator().manual_seed(k)
    w = torch.randint(-2**31, 2**31, (300, k), generator=g, dtype=torch.int64).to(torch.int32)
    w[:, : k // 2] = w[:, k // 2 : 2 * (k // 2)]  # every row has ties
    w[0] = 2**31 - 1
    w[1] = -(2**31)
    want = torch.sort(w, dim=1, stable=True).indices
    got = h32._stable_argsort_rows(w)
    assert got.dtype == want.dtype and torch.equal(got, want)
    assert torch.equal(h32._stable_argsort_rows(w[:0]), want[:0])


def test_inverse_permutation_undoes_the_permutation():
    from transforms_zoo.sequence import Permute

    t = Permute(dim=-1)
    x = torch.rand(50, 3, 9)
    p = t.sample(SampleRNG.for_range(0, 0, 50))
    assert torch.equal(t.inverse().apply(t.apply(x, p), p), x)


def test_draws_inside_torch_compile_take_the_torch_path():
    def draw(x):
        return x[:, :8] + SampleRNG.for_range(0, 0, x.shape[0]).permutation(8)

    x = torch.zeros(16, 8)
    compiled = torch.compile(draw, backend="eager")
    assert torch.equal(compiled(x), draw(x))


def test_the_numpy_path_declines_what_torch_would_treat_differently():
    assert h32._numpy_view(torch.zeros((), dtype=torch.int32)) is None  # 0-d
    assert h32._numpy_view(torch.zeros(4, 4, dtype=torch.int32).t()) is None  # not contiguous
    assert h32._numpy_view(torch.zeros(1, dtype=torch.int32).expand(5)) is None  # overlapping
    assert h32._numpy_view(torch.zeros(h32._NUMPY_MAX_ELEMENTS + 1, dtype=torch.int32)) is None
    with torch.inference_mode():
        frozen = torch.zeros(3, dtype=torch.int32)
    with pytest.raises(RuntimeError):  # in place on an inference tensor outside inference mode
        h32._mix32_(frozen)
    w = h32._to_word(torch.arange(6, dtype=torch.int64))
    assert h32._to_unsigned(h32._mix32_(w[::2])).tolist() == [h32._mix_int(v) for v in (0, 2, 4)]


def test_an_audit_is_the_same_on_the_numpy_and_torch_paths(monkeypatch):
    from eqaudit.engine.run import audit
    from eqaudit.spec import spec_from_dict

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 16))
    spec = spec_from_dict({
        "input": {"shape": [16]}, "samples": 512,
        "checks": [
            {"name": "perm", "both": {"permute": {"dim": -1}}},
            {"name": "roll", "both": {"roll": {"shift": [-3, 3], "dim": -1}}},
            {"name": "gain", "input": {"gain": {"factor": [0.9, 1.1]}}},
            {"name": "noise", "input": {"gaussian_noise": {"std": 0.1}}},
        ],
    })
    fast = audit(model, spec)
    monkeypatch.setattr(h32, "_np", None)  # the path CUDA takes
    zr.clear_position_keys()
    slow = audit(model, spec)
    assert [(c.mean, c.p95, c.max) for c in fast.checks] == [(c.mean, c.p95, c.max) for c in slow.checks]
