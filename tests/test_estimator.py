import math

import pytest
import torch

from eqaudit.engine.estimator import BLOCK, BlockStats, summarize_values, z_value


def test_z_value_matches_normal_quantile():
    assert z_value(0.95) == pytest.approx(1.959963984540054, abs=1e-12)
    assert z_value(0.99) == pytest.approx(2.5758293035489004, abs=1e-12)
    with pytest.raises(ValueError):
        z_value(1.0)


def test_reference_summary_by_hand():
    s = summarize_values([1.0, 2.0, 3.0, 4.0])
    assert s.n == 4 and s.mean == 2.5
    assert s.std == pytest.approx(math.sqrt(5 / 3))
    assert s.stderr == pytest.approx(math.sqrt(5 / 3) / 2)
    assert s.ci_low == pytest.approx(2.5 - z_value(0.95) * s.stderr)
    assert s.max == 4.0


@pytest.mark.parametrize("chunk_blocks", [1, 3, 8])
def test_block_stats_equal_reference_for_any_chunking(chunk_blocks):
    torch.manual_seed(0)
    n = 1000
    values = torch.rand(n, dtype=torch.float64) * 3 + 1e6  # large offset: tests cancellation
    ref = summarize_values(values)
    stats = BlockStats(n, 1)
    padded = torch.cat([values, torch.zeros(-n % BLOCK, dtype=torch.float64)])
    valid = torch.arange(padded.numel()) < n
    step = chunk_blocks * BLOCK
    for start in range(0, padded.numel(), step):
        stats.update(0, start, padded[start : start + step], valid[start : start + step])
    got = stats.summary(0)
    assert got.n == ref.n
    assert got.mean == pytest.approx(ref.mean, rel=1e-15)
    assert got.std == pytest.approx(ref.std, rel=1e-9)
    assert got.max == ref.max


def test_chunkings_give_bitwise_identical_summaries():
    torch.manual_seed(1)
    n = 64 * 20
    values = torch.rand(n, dtype=torch.float64)
    results = []
    for step in (64, 128, 640, n):
        stats = BlockStats(n, 1)
        for start in range(0, n, step):
            stats.update(0, start, values[start : start + step])
        results.append(stats.summary(0))
    assert all(r == results[0] for r in results)


def test_nonfinite_values_are_counted_not_averaged():
    stats = BlockStats(64, 1)
    v = torch.ones(64, dtype=torch.float64)
    v[3] = float("nan")
    v[5] = float("inf")
    stats.update(0, 0, v)
    s = stats.summary(0)
    assert s.nonfinite == 2 and s.n == 62 and s.mean == 1.0


def _tables(stats: BlockStats) -> list[torch.Tensor]:
    return [stats.count, stats.total, stats.m2, stats.max, stats.nonfinite, stats.values]


def test_nonfinite_counts_follow_the_mask_and_no_mask_equals_an_all_true_one():
    v = torch.linspace(-3.0, 5.0, 128, dtype=torch.float64).reshape(64, 2).clone()
    v[3, 0], v[5, 0], v[7, 1], v[9, 1] = float("nan"), float("inf"), float("-inf"), -0.0
    v[11, 1] = torch.finfo(torch.float64).tiny / 4  # a subnormal is finite
    plain, masked, part = BlockStats(64, 2), BlockStats(64, 2), BlockStats(64, 2)
    plain.update(slice(0, 2), 0, v)
    masked.update(slice(0, 2), 0, v, torch.ones_like(v, dtype=torch.bool))
    keep = torch.ones_like(v, dtype=torch.bool)
    keep[5, 0] = keep[20, 1] = False  # one non-finite and one finite value left out
    part.update(slice(0, 2), 0, v, keep)
    for a, b in zip(_tables(plain), _tables(masked)):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    assert [plain.summary(j).nonfinite for j in (0, 1)] == [2, 1]
    assert [plain.summary(j).n for j in (0, 1)] == [62, 63]
    assert [part.summary(j).nonfinite for j in (0, 1)] == [1, 1]
    assert [part.summary(j).n for j in (0, 1)] == [62, 62]


def test_chunks_must_align_with_blocks():
    with pytest.raises(ValueError):
        BlockStats(100, 1).update(0, 10, torch.zeros(64))
