"""The built-in transforms of transforms_zoo, checked against closed-form truths."""

from __future__ import annotations

import math

import pytest
import torch

import transforms_zoo as tz
from transforms_zoo import SampleRNG, TransformError


def rng(n: int, seed: int = 0) -> SampleRNG:
    return SampleRNG.for_range(seed, 0, n)


def draw(t: tz.Transform, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    return t.apply(x, t.sample(rng(x.shape[0], seed)))


def arange_images(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.arange(math.prod(shape), dtype=dtype).reshape(shape)


# -- shift ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dx, dy", [(1, 0), (0, 1), (-2, 3), (7, -9), (0, 0)])
def test_circular_shift_is_torch_roll(dx, dy):
    x = arange_images(2, 3, 5, 6)
    t = tz.build({"shift": {"dx": dx, "dy": dy}})
    assert not t.is_random and t.sample(rng(2)) is None
    torch.testing.assert_close(t.apply(x, None), torch.roll(x, (dy, dx), (-2, -1)), rtol=0, atol=0)


def test_shift_moves_content_right_and_down():
    x = torch.zeros(1, 4, 4)
    x[0, 1, 1] = 1.0
    y = tz.build({"shift": {"dx": 2, "dy": 1}}).apply(x, None)
    assert y[0, 2, 3] == 1.0 and y.sum() == 1.0


@pytest.mark.parametrize("dx, dy", [(1, 0), (0, -1), (2, -3), (-1, 2), (9, 0)])
def test_zero_shift_matches_manual_slicing(dx, dy):
    x = arange_images(2, 3, 5, 6) + 1.0
    h, w = 5, 6
    ref = torch.zeros_like(x)
    # out[i, j] = x[i - dy, j - dx] where that lies inside the image.
    for i in range(h):
        for j in range(w):
            if 0 <= i - dy < h and 0 <= j - dx < w:
                ref[..., i, j] = x[..., i - dy, j - dx]
    fixed = tz.build({"shift": {"dx": dx, "dy": dy, "mode": "zeros"}})
    torch.testing.assert_close(fixed.apply(x, None), ref, rtol=0, atol=0)
    # The per-sample (gather) path gives the same result for the same shift.
    p = tz.image.ShiftParams(torch.full((2,), dx), torch.full((2,), dy))
    torch.testing.assert_close(fixed.apply(x, p), ref, rtol=0, atol=0)


def test_random_shifts_per_sample_match_roll_row_by_row():
    x = torch.rand(64, 2, 5, 7)
    for mode in ("circular", "zeros"):
        t = tz.build({"shift": {"dx": [-3, 3], "dy": [-8, 8], "mode": mode}})
        p = t.sample(rng(64))
        assert t.is_random and p.dx.dtype == torch.int64
        assert p.dx.min() == -3 and p.dx.max() == 3 and p.dy.min() >= -8 and p.dy.max() <= 8
        y = t.apply(x, p)
        for r in range(64):
            one = tz.build({"shift": {"dx": int(p.dx[r]), "dy": int(p.dy[r]), "mode": mode}})
            torch.testing.assert_close(y[r : r + 1], one.apply(x[r : r + 1], None), rtol=0, atol=0)


def test_random_shift_replays_and_depends_only_on_the_sample_index():
    t = tz.build({"shift": {"dx": [-4, 4], "dy": [-4, 4]}})
    x = torch.rand(10, 1, 6, 6)
    p = t.sample(SampleRNG.for_range(3, 0, 10))
    p_again = t.sample(SampleRNG.for_range(3, 0, 10))
    assert torch.equal(p.dx, p_again.dx) and torch.equal(p.dy, p_again.dy)
    assert torch.equal(t.apply(x, p), t.apply(x, p_again))
    tail = t.sample(SampleRNG.for_range(3, 5, 10))
    assert torch.equal(tail.dx, p.dx[5:]) and torch.equal(tail.dy, p.dy[5:])
    assert torch.equal(t.apply(x[5:], tail), t.apply(x, p)[5:])
    other_seed = t.sample(SampleRNG.for_range(4, 0, 10))
    assert not (torch.equal(other_seed.dx, p.dx) and torch.equal(other_seed.dy, p.dy))


def test_circular_shift_then_its_inverse_is_identity():
    x = torch.rand(8, 3, 5, 5)
    t = tz.build({"shift": {"dx": [-6, 6], "dy": [-6, 6]}})
    p = t.sample(rng(8))
    back = tz.image.ShiftParams(-p.dx, -p.dy)
    assert torch.equal(t.apply(t.apply(x, p), back), x)
    assert torch.equal(tz.build({"shift": {"dx": -2}}).apply(tz.build({"shift": {"dx": 2}}).apply(x, None), None), x)


# -- rotate ---------------------------------------------------------------------------------------
def test_rotate_90_matches_rot90_and_0_is_identity():
    x = torch.rand(4, 3, 9, 9)
    torch.testing.assert_close(tz.build({"rotate": {"degrees": 90}}).apply(x, None), torch.rot90(x, 1, (-2, -1)),
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(tz.build({"rotate": {"degrees": -90}}).apply(x, None), torch.rot90(x, -1, (-2, -1)),
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(tz.build({"rotate": {"degrees": 0}}).apply(x, None), x, rtol=0, atol=1e-6)
    torch.testing.assert_close(tz.build({"rotate": {"degrees": 360}}).apply(x, None), x, rtol=0, atol=1e-5)
    # Even-sized images rotate about the centre between pixels, so 90 degrees is exact there too.
    x8 = torch.rand(2, 8, 8)
    torch.testing.assert_close(tz.build({"rotate": {"degrees": 90}}).apply(x8, None), torch.rot90(x8, 1, (-2, -1)),
                               rtol=0, atol=1e-5)


def _blob(size: int, sigma: float, dtype=torch.float32) -> torch.Tensor:
    c = (size - 1) / 2
    i = torch.arange(size, dtype=dtype) - c
    r2 = i[:, None] ** 2 + i[None, :] ** 2
    return torch.exp(-r2 / (2 * sigma**2))


def test_rotate_keeps_a_radially_symmetric_image():
    x = _blob(33, 4.0).expand(3, 1, 33, 33)
    t = tz.build({"rotate": {"degrees": [-180, 180]}})
    y = draw(t, x)
    inner = (slice(None), slice(None), slice(6, 27), slice(6, 27))
    assert (y - x)[inner].abs().max() < 0.02


def test_rotate_non_square_image_is_a_true_rotation():
    # A 90-degree turn of a wide image equals rot90 in the central square (pixels, not aspect-scaled).
    x = _blob(15, 3.0)[None, None].expand(1, 1, 15, 15).clone()
    wide = torch.zeros(1, 1, 15, 21)
    wide[..., 3:18] = x
    y = tz.build({"rotate": {"degrees": 90}}).apply(wide, None)
    torch.testing.assert_close(y[..., 3:18], torch.rot90(x, 1, (-2, -1)), rtol=0, atol=1e-5)


def test_rotate_range_draws_angles_in_range_and_replays():
    t = tz.build({"rotate": {"degrees": [-15, 30]}})
    p = t.sample(rng(2000))
    assert p.shape == (2000,) and p.min() >= -15 and p.max() < 30
    assert p.min() < -14 and p.max() > 29 and abs(float(p.mean()) - 7.5) < 1.0
    x = torch.rand(6, 2, 7, 7)
    p6 = t.sample(rng(6))
    assert torch.equal(t.apply(x, p6), t.apply(x, p6))
    # Row r is the fixed rotation by p[r].
    for r in range(6):
        one = tz.build({"rotate": {"degrees": float(p6[r])}})
        torch.testing.assert_close(t.apply(x, p6)[r], one.apply(x[r : r + 1], None)[0], rtol=0, atol=1e-6)


def test_rotate_padding_modes_and_leading_dims():
    x = torch.rand(2, 3, 4, 9, 9)  # (n, T, C, H, W): any number of leading dims
    for padding in ("zeros", "border", "reflection"):
        t = tz.build({"rotate": {"degrees": 30, "padding": padding}})
        y = t.apply(x, None)
        assert y.shape == x.shape
        torch.testing.assert_close(y.reshape(6, 4, 9, 9), t.apply(x.reshape(6, 4, 9, 9), None))
    corner_zeros = tz.build({"rotate": {"degrees": 45}}).apply(torch.ones(1, 9, 9), None)[0, 0, 0]
    corner_border = tz.build({"rotate": {"degrees": 45, "padding": "border"}}).apply(torch.ones(1, 9, 9), None)[0, 0, 0]
    assert corner_zeros == 0.0 and corner_border == 1.0


# -- scale ----------------------------------------------------------------------------------------
def test_scale_one_is_identity():
    x = torch.rand(3, 2, 8, 11)
    torch.testing.assert_close(tz.build({"scale": {"factor": 1}}).apply(x, None), x, rtol=0, atol=1e-6)


def test_scale_two_zooms_in_on_a_ramp():
    # A ramp x[i, j] = j: zooming in by 2 about the centre magnifies it, so the slope per pixel halves
    # and the centre value stays.
    w = 16
    ramp = torch.arange(w, dtype=torch.float64).expand(1, 1, w, w)
    y = tz.build({"scale": {"factor": 2}}).apply(ramp, None)
    mid = y[0, 0, w // 2, 4:12]
    slope = mid[1:] - mid[:-1]
    torch.testing.assert_close(slope, torch.full_like(slope, 0.5), rtol=0, atol=1e-9)
    assert float(y[0, 0, 5, 7:9].mean()) == pytest.approx((w - 1) / 2)
    # ... and zooming out by 2 doubles it.
    y = tz.build({"scale": {"factor": 0.5}}).apply(ramp, None)
    slope = y[0, 0, w // 2, 6:10].diff()
    torch.testing.assert_close(slope, torch.full_like(slope, 2.0), rtol=0, atol=1e-9)


def test_scale_ranges_uniform_and_log_uniform():
    p = tz.build({"scale": {"factor": [0.5, 2.0]}}).sample(rng(4000))
    assert p.min() >= 0.5 and p.max() < 2.0 and abs(float(p.mean()) - 1.25) < 0.03
    q = tz.build({"scale": {"factor": [0.5, 2.0], "log_uniform": True}}).sample(rng(4000))
    assert q.min() >= 0.5 and q.max() <= 2.0 and abs(float(torch.log(q).mean())) < 0.03
    assert abs(float((q < 1).double().mean()) - 0.5) < 0.03
    with pytest.raises(TransformError, match="> 0"):
        tz.build({"scale": {"factor": [0, 2]}})


# -- transpose ------------------------------------------------------------------------------------
def test_transpose_swaps_rows_and_columns():
    x = torch.rand(2, 3, 4, 5)
    y = tz.build("transpose").apply(x, None)
    assert torch.equal(y, x.transpose(-2, -1))
    # A D4 identity: transpose = rot90 followed by vflip... checked against torch directly.
    sq = torch.rand(2, 6, 6)
    assert torch.equal(tz.build(["rot90", "vflip"]).apply(sq, (None, None)), tz.build("transpose").apply(sq, None))


# -- permute, roll, flip --------------------------------------------------------------------------
def test_permute_fixed_matches_indexing():
    x = torch.rand(4, 5, 3)
    t = tz.build({"permute": {"perm": [2, 0, 4, 1, 3]}})  # dim -2: the 5 set elements
    assert not t.is_random
    assert torch.equal(t.apply(x, None), x[:, [2, 0, 4, 1, 3], :])
    t0 = tz.build({"permute": {"perm": [1, 2, 0], "dim": 1}})  # dim 1 of a sample = batch dim 2
    assert torch.equal(t0.apply(x, None), x[:, :, [1, 2, 0]])


def test_permute_random_is_a_permutation_per_sample_and_shared_by_both_sides():
    n, k = 50, 6
    t = tz.build({"permute": {"dim": 0}})
    p = t.sample(rng(n))
    ids = torch.arange(k, dtype=torch.float32).expand(n, k)
    perm = t.apply(ids, p).long()
    assert torch.equal(perm.sort(dim=1).values, torch.arange(k).expand(n, k))
    assert len({tuple(r.tolist()) for r in perm}) > 40  # different samples, different permutations
    # "both:": the same params permute a model input and a model output consistently.
    x = torch.rand(n, k, 3)
    feats = torch.rand(n, k, 8)
    tx, tf = t.apply(x, p), t.apply(feats, p)
    for r in range(n):
        assert torch.equal(tx[r], x[r, perm[r]]) and torch.equal(tf[r], feats[r, perm[r]])
    # Row r depends only on the sample index.
    tail = t.sample(SampleRNG.for_range(0, 30, 50))
    assert torch.equal(t.apply(ids[30:], tail).long(), perm[30:])


def test_permute_uniform_over_permutations():
    t = tz.build({"permute": {"dim": -1}})
    perm = t.apply(torch.arange(3.0).expand(6000, 3), t.sample(rng(6000))).long()
    code = perm[:, 0] * 9 + perm[:, 1] * 3 + perm[:, 2]
    counts = torch.bincount(code, minlength=27)
    counts = counts[counts > 0]
    assert len(counts) == 6 and (counts - 1000).abs().max() < 120


def test_permute_checks_the_dimension():
    with pytest.raises(TransformError, match="shape"):
        tz.build({"permute": {"dim": 2}}).apply(torch.rand(4, 5, 3), tz.build({"permute": {"dim": 2}}).sample(rng(4)))
    with pytest.raises(TransformError, match="shape"):
        tz.build({"permute": {"perm": [0, 1, 2], "dim": 0}}).apply(torch.rand(4, 1), None)
    with pytest.raises(TransformError, match="not a permutation"):
        tz.build({"permute": {"perm": [0, 2]}})


def test_roll_and_flip():
    x = torch.rand(5, 7, 4)
    assert torch.equal(tz.build({"roll": {"shift": 2, "dim": 0}}).apply(x, None), torch.roll(x, 2, 1))
    assert torch.equal(tz.build("roll").apply(x, None), torch.roll(x, 1, -1))
    t = tz.build({"roll": {"shift": [-10, 10], "dim": -2}})
    p = t.sample(rng(5))
    y = t.apply(x, p)
    for r in range(5):
        assert torch.equal(y[r], torch.roll(x[r], int(p[r]), 0))
    assert torch.equal(tz.build("flip").apply(x, None), x.flip(-1))
    assert torch.equal(tz.build({"flip": {"dim": 0}}).apply(x, None), x.flip(1))
    with pytest.raises(TransformError, match="dimension -3"):
        tz.build({"flip": {"dim": -3}}).apply(x, None)


# -- rotate3d -------------------------------------------------------------------------------------
def test_rotate3d_random_rotations_are_proper_and_orthogonal():
    t = tz.build("rotate3d")
    assert t.is_random
    r = t.sample(rng(2000))
    assert r.shape == (2000, 3, 3) and r.dtype == torch.float64
    eye = torch.eye(3, dtype=torch.float64).expand(2000, 3, 3)
    torch.testing.assert_close(r @ r.transpose(-1, -2), eye, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(2000, dtype=torch.float64), rtol=0, atol=1e-12)
    # Haar: every entry has mean 0 (and variance 1/3).
    assert r.mean(0).abs().max() < 0.05
    assert (r.var(0) - 1 / 3).abs().max() < 0.05
    # The rotation angle of a Haar rotation has density (1 - cos a) / pi: mean angle pi/2 + 2/pi.
    angle = torch.arccos(((r.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1))
    assert abs(float(angle.mean()) - (math.pi / 2 + 2 / math.pi)) < 0.05


def test_rotate3d_acts_on_points_preserving_norms():
    t = tz.build("rotate3d")
    x = torch.randn(16, 10, 3)
    p = t.sample(rng(16))
    y = t.apply(x, p)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y, x @ p.float().transpose(-1, -2))
    # Pairwise distances (a point cloud's shape) are kept too.
    torch.testing.assert_close(torch.cdist(y, y), torch.cdist(x, x), rtol=1e-4, atol=1e-5)


def test_rotate3d_about_a_fixed_axis():
    t = tz.build({"rotate3d": {"axis": [0, 0, 1], "degrees": 90}})
    assert not t.is_random and t.sample(rng(2)) is None
    e = torch.eye(3).expand(2, 3, 3)  # rows are the points x, y, z
    y = t.apply(e, None)
    torch.testing.assert_close(y[0], torch.tensor([[0.0, 1, 0], [-1, 0, 0], [0, 0, 1]]), rtol=0, atol=1e-7)
    # An unnormalised axis is normalised; the axis itself is fixed.
    t2 = tz.build({"rotate3d": {"axis": [1, 1, 1], "degrees": 120}})
    pts = torch.tensor([[[1.0, 0, 0], [2.0, 2, 2]]])
    torch.testing.assert_close(t2.apply(pts, None), torch.tensor([[[0.0, 1, 0], [2.0, 2, 2]]]), rtol=0, atol=1e-6)


def test_rotate3d_ranges_and_max_degrees():
    t = tz.build({"rotate3d": {"axis": [1, 0, 0], "degrees": [10, 20]}})
    r = t.sample(rng(500))
    angle = torch.rad2deg(torch.atan2(r[:, 2, 1], r[:, 1, 1]))
    assert angle.min() >= 10 - 1e-9 and angle.max() < 20 and torch.equal(r[:, 0, 0], torch.ones(500, dtype=r.dtype))
    t = tz.build({"rotate3d": {"max_degrees": 15}})
    r = t.sample(rng(2000))
    angle = torch.rad2deg(torch.arccos(((r.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)))
    assert angle.max() <= 15 + 1e-6 and angle.max() > 14.5 and abs(float(angle.mean()) - 7.5) < 0.5
    with pytest.raises(TransformError, match="needs 'degrees'"):
        tz.build({"rotate3d": {"axis": [0, 0, 1]}})
    with pytest.raises(TransformError, match="axis"):
        tz.build({"rotate3d": {"degrees": 30}})
    with pytest.raises(TransformError, match="no direction"):
        tz.build({"rotate3d": {"axis": [0, 0, 0], "degrees": 30}})


def test_rotate3d_wrong_shape():
    t = tz.build("rotate3d")
    with pytest.raises(TransformError, match="size 3"):
        t.apply(torch.rand(4, 5, 2), t.sample(rng(4)))


# -- noise and gain -------------------------------------------------------------------------------
def test_gaussian_noise_has_the_requested_std_and_replays():
    t = tz.build({"gaussian_noise": {"std": 0.3}})
    x = torch.full((64, 3, 32, 32), 2.0)
    p = t.sample(rng(64))
    y = t.apply(x, p)
    noise = y - x
    assert abs(float(noise.std()) - 0.3) < 0.005 and abs(float(noise.mean())) < 0.005
    assert torch.equal(t.apply(x, p), y)
    # Row r depends only on the sample index, and rows differ.
    tail = t.sample(SampleRNG.for_range(0, 60, 64))
    assert torch.equal(t.apply(x[60:], tail), y[60:])
    assert not torch.equal(noise[0], noise[1])
    assert tz.build("gaussian_noise").std == 0.01


def test_gain():
    x = torch.rand(5, 4)
    torch.testing.assert_close(tz.build({"gain": {"factor": 2.5}}).apply(x, None), 2.5 * x)
    t = tz.build({"gain": {"factor": [0.5, 1.5]}})
    p = t.sample(rng(5))
    assert p.min() >= 0.5 and p.max() < 1.5
    torch.testing.assert_close(t.apply(x, p), x * p[:, None].float())


# -- errors ---------------------------------------------------------------------------------------
def test_unknown_parameter_has_did_you_mean():
    with pytest.raises(TransformError) as exc:
        tz.build({"rotate": {"degree": 30}})
    assert exc.value.key == "rotate.degree" and "did you mean 'degrees'" in str(exc.value)
    with pytest.raises(TransformError, match="did you mean 'mode'"):
        tz.build({"shift": {"mdoe": "zeros"}})


@pytest.mark.parametrize(
    "config",
    [{"rotate": {"degrees": [2, 1]}}, {"shift": {"dx": [2, 1]}}, {"gain": {"factor": [2, 1]}},
     {"roll": {"shift": [3, -3]}}, {"scale": {"factor": [2, 1]}}],
)
def test_bad_range_raises(config):
    with pytest.raises(TransformError, match="lo > hi"):
        tz.build(config)


def test_bad_values_raise():
    with pytest.raises(TransformError, match="rotate.degrees"):
        tz.build({"rotate": {}})
    with pytest.raises(TransformError, match="expected one of"):
        tz.build({"shift": {"mode": "wrap"}})
    with pytest.raises(TransformError, match="integer"):
        tz.build({"shift": {"dx": 1.5}})
    with pytest.raises(TransformError, match="> 0"):
        tz.build({"gaussian_noise": {"std": 0}})


@pytest.mark.parametrize("name", ["shift", "transpose", "hflip"])
def test_image_transforms_need_two_dims(name):
    with pytest.raises(TransformError, match="shape"):
        tz.build(name).apply(torch.rand(4, 5), None)


def test_wrong_shape_for_rotate_and_scale():
    for config in ({"rotate": {"degrees": 10}}, {"scale": {"factor": 2}}):
        with pytest.raises(TransformError, match="shape"):
            tz.build(config).apply(torch.rand(4, 5), None)
    with pytest.raises(TransformError, match="floating-point"):
        tz.build({"rotate": {"degrees": 10}}).apply(torch.zeros(2, 4, 4, dtype=torch.int64), None)


# -- composition, dtypes, autograd, inference mode ------------------------------------------------
def test_build_list_composes_left_to_right():
    x = torch.rand(3, 5, 5)
    t = tz.build([{"shift": {"dx": 1, "mode": "zeros"}}, "hflip"])
    assert isinstance(t, tz.Compose)
    expected = torch.flip(tz.build({"shift": {"dx": 1, "mode": "zeros"}}).apply(x, None), (-1,))
    wrong_order = tz.build({"shift": {"dx": 1, "mode": "zeros"}}).apply(torch.flip(x, (-1,)), None)
    assert torch.equal(t.apply(x, t.sample(rng(3))), expected) and not torch.equal(expected, wrong_order)
    r = tz.build([{"rotate": {"degrees": [-30, 30]}}, {"gaussian_noise": {"std": 0.1}}])
    p = r.sample(rng(3))
    assert torch.equal(r.apply(x, p), r.parts[1].apply(r.parts[0].apply(x, p[0]), p[1]))


ALL_CONFIGS = [
    "identity", "rot90", "hflip", "vflip", "transpose", "flip",
    {"shift": {"dx": [-2, 2], "dy": 1}}, {"shift": {"dx": 1, "mode": "zeros"}},
    {"shift": {"dx": [-2, 2], "dy": [-1, 1], "mode": "zeros"}},
    {"rotate": {"degrees": [-30, 30], "padding": "reflection"}}, {"rotate": {"degrees": 10}},
    {"scale": {"factor": [0.8, 1.25], "log_uniform": True}}, {"scale": {"factor": 1.5, "padding": "border"}},
    "permute", {"permute": {"perm": [1, 0, 2, 3, 4, 5]}}, {"roll": {"shift": [-3, 3]}}, "roll",
    {"gaussian_noise": {"std": 0.1}}, {"gain": {"factor": [0.5, 2]}}, {"gain": {"factor": 3}},
]


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=str)
def test_dtype_device_inference_mode_and_gradients(config):
    t = tz.build(config)
    x64 = torch.rand(4, 2, 6, 6, dtype=torch.float64)
    p = t.sample(rng(4))
    y = t.apply(x64, p)
    assert y.dtype == torch.float64 and y.shape == x64.shape
    with torch.inference_mode():
        y_inf = t.apply(x64, t.sample(rng(4)))
    torch.testing.assert_close(y_inf, y, rtol=0, atol=0)
    x = torch.rand(4, 2, 6, 6, requires_grad=True)
    out = t.apply(x, p)
    assert out.dtype == torch.float32
    if config in ("identity",):
        return
    (out * torch.arange(out.numel()).reshape(out.shape)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_rotate3d_dtype_inference_mode_and_gradients():
    t = tz.build("rotate3d")
    p = t.sample(rng(4))
    x64 = torch.randn(4, 7, 3, dtype=torch.float64)
    assert t.apply(x64, p).dtype == torch.float64
    with torch.inference_mode():
        torch.testing.assert_close(t.apply(x64, t.sample(rng(4))), x64 @ p.transpose(-1, -2), rtol=0, atol=1e-12)
    x = torch.randn(4, 7, 3, requires_grad=True)
    t.apply(x, p).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, 2 * x.detach(), rtol=1e-5, atol=1e-5)  # |Rx|^2 = |x|^2


def test_gradients_through_rotate_scale_and_shift_are_right():
    # Each is linear in x: the gradient of <w, T(x)> is T^T(w); check with finite differences.
    for config in ({"rotate": {"degrees": 33}}, {"scale": {"factor": 1.3}}, {"shift": {"dx": [-2, 2], "dy": [-2, 2]}}):
        t = tz.build(config)
        p = t.sample(rng(2))
        x = torch.rand(2, 1, 5, 5, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda v: t.apply(v, p), (x,))


def test_every_builtin_is_documented():
    for name in tz.names():
        cls = tz.get(name)
        assert cls.summary and cls.acts_on
        for param in cls.params:
            assert param.doc and param.type_doc, (name, param.name)


RANDOM_ON_IMAGES = [
    {"shift": {"dx": [-3, 3]}}, {"rotate": {"degrees": [-15, 15]}}, {"scale": {"factor": [0.8, 1.2]}},
    {"roll": {"shift": [1, 3], "dim": -1}}, {"gain": {"factor": [0.9, 1.1]}}, {"permute": {"dim": -1}},
    {"gaussian_noise": {"std": 0.1}}, {"regular_c4": {"k": [0, 3]}},
    ["hflip", {"rotate": {"degrees": [-15, 15]}}],
]


@pytest.mark.parametrize("config", RANDOM_ON_IMAGES, ids=str)
def test_random_transforms_refuse_to_act_without_their_draw(config):
    # apply(x, None) used to act silently with the low end of the range (rotate(-15) for [-15, 15])
    t = tz.build(config)
    assert t.is_random
    x = torch.rand(3, 4, 6, 6)
    for f in (t, t.inverse()) if hasattr(t, "inverse") else (t,):
        with pytest.raises(TransformError, match="drawn by sample"):
            f.apply(x, None)
        params = f.sample(SampleRNG.for_range(0, 0, 3))
        assert f.apply(x, params).shape == x.shape
        assert f(x).shape == x.shape  # __call__ draws from torch's generator


@pytest.mark.parametrize("config", [{"shift": {"dx": 2}}, {"rotate": {"degrees": 15}}, {"scale": {"factor": 1.2}},
                                    {"roll": {"shift": 2, "dim": -1}}, {"gain": {"factor": 2}},
                                    {"regular_c4": {"k": 1}}], ids=str)
def test_fixed_transforms_act_without_parameters(config):
    t = tz.build(config)
    x = torch.rand(3, 4, 6, 6)
    assert not t.is_random
    assert torch.equal(t.apply(x, None), t.apply(x, t.sample(SampleRNG.for_range(0, 0, 3))))
    if hasattr(t, "inverse"):
        assert t.inverse().apply(t.apply(x, None), None).shape == x.shape


@pytest.mark.parametrize("degrees", [0, 90, 180, 270, 360, -90, 450])
def test_fixed_quarter_turns_are_exact_in_float32(degrees):
    # bilinear resampling in float32 grid coordinates was off by up to ~1e-4 on large images
    x = torch.rand(2, 3, 225, 225)
    t = tz.build({"rotate": {"degrees": degrees}})
    y = t.apply(x, None)
    assert torch.equal(y, torch.rot90(x, (degrees // 90) % 4, (-2, -1)))
    assert torch.equal(t.inverse().apply(y, None), x)
    x64 = torch.rand(2, 1, 9, 9, dtype=torch.float64)  # the same as the bilinear warp, in exact arithmetic
    warped = t.apply(x64, torch.full((2,), float(degrees), dtype=torch.float64))
    assert torch.allclose(t.apply(x64, None), warped, rtol=0, atol=1e-12)


def test_half_turn_on_a_rectangle_and_identity_scale_are_exact():
    x = torch.rand(2, 1, 51, 77)
    assert torch.equal(tz.build({"rotate": {"degrees": 180}}).apply(x, None), x.flip(-2, -1))
    assert torch.equal(tz.build({"scale": {"factor": 1}}).apply(x, None), x)
    quarter = tz.build({"rotate": {"degrees": 90}}).apply(x, None)  # changes the frame: resampled
    assert quarter.shape == x.shape
