"""The differentiable penalty ``EquivarianceError`` (drop-in for ``equivariance-regularizer``)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

import transforms_zoo as tz
from eqaudit import EquivarianceError, EquivarianceRegularizer
from eqaudit.engine.distances import parse_distance


# -- helper models ------------------------------------------------------------------------------------
class PixelReader(nn.Module):
    """Pixel (0, 0) of channel 0: under a circular shift by one it compares two independent pixels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, :1]


class PixelSum(nn.Module):
    """Invariant to every permutation of pixels (rot90, flips, circular shifts); no parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=(-1, -2))


class PixelMax(nn.Module):
    """Max and min over pixels: exactly invariant to every permutation of pixels (no rounding)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.amax(dim=(-1, -2)), x.amin(dim=(-1, -2))], dim=-1)


class Square(nn.Module):
    """Elementwise: exactly equivariant to every permutation of pixels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


class Counting(nn.Module):
    """Counts forward calls and records each batch it sees."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.seen.append(x.detach().clone())
        return self.inner(x)


class BufferOnly(nn.Module):
    """No parameters, one float64 buffer: points must come in float64."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(2.0, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.scale).amax(dim=(-1, -2))


def rot90(t: torch.Tensor) -> torch.Tensor:
    return torch.rot90(t, 1, (-2, -1))


def hflip(t: torch.Tensor) -> torch.Tensor:
    return torch.flip(t, (-1,))


def ident(t: torch.Tensor) -> torch.Tensor:
    return t


def conv_model(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(1234)
    return nn.Conv2d(1, 1, 3, padding=1).to(dtype)


def linear_model() -> nn.Module:
    torch.manual_seed(1234)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 5))


def by_hand(model: nn.Module, x: torch.Tensor, f_out: Callable, f_in: Callable, p: float = 2.0) -> torch.Tensor:
    a = f_out(model(x)).reshape(x.shape[0], -1)
    b = model(f_in(x)).reshape(x.shape[0], -1)
    return torch.linalg.vector_norm(a - b, ord=p, dim=1).mean()


# -- analytic truths ----------------------------------------------------------------------------------
@pytest.mark.parametrize("f", ["rot90", "hflip", {"shift": {"dx": 1, "dy": 2}}, rot90, hflip])
@pytest.mark.parametrize("form", [3, 4])
def test_invariant_and_equivariant_models_are_exactly_zero(f, form: int) -> None:
    if form == 3:  # the same f on the outputs: an elementwise model
        reg = EquivarianceError(Square(), (2, 5, 5), [(f, 0.0, 1.0)], n=64)
    else:  # invariance
        reg = EquivarianceError(PixelMax(), (2, 5, 5), [("identity", f, 0.0, 1.0)], n=64)
    out = reg()
    assert out.dim() == 0
    assert out.item() == 0.0


def test_pixel_reader_under_shift_gives_one_third() -> None:
    n = 20000
    torch.manual_seed(0)
    reg = EquivarianceError(PixelReader(), (1, 4, 4), [("identity", {"shift": {"dx": 1}}, 0.0, 1.0)], dist=1, n=n)
    se = math.sqrt(1 / 18 / n)  # Var|U1 - U2| = 1/6 - 1/9
    assert abs(reg().item() - 1 / 3) < 4 * se


def test_bounds_scale_the_expected_error() -> None:
    n = 20000
    torch.manual_seed(1)
    reg = EquivarianceError(
        PixelReader(), (1, 4, 4), [("identity", {"shift": {"dx": 1}}, 0.0, 1.0)], dist=1, n=n, bounds=[-1, 1]
    )
    se = 2 * math.sqrt(1 / 18 / n)
    assert abs(reg().item() - 2 / 3) < 4 * se


def test_hinge_and_weight() -> None:
    model = conv_model()
    torch.manual_seed(0)
    x = torch.rand(32, 1, 4, 4)
    with torch.no_grad():
        err = by_hand(model, x, ident, rot90).item()
    assert err > 0
    above = EquivarianceError(model, (1, 4, 4), [(ident, rot90, err + 0.5, 3.0)])
    assert above(x).item() == 0.0
    below = EquivarianceError(model, (1, 4, 4), [(ident, rot90, err / 2, 3.0)])
    assert below(x).item() == pytest.approx(3.0 * (err - err / 2), rel=1e-5)
    two = EquivarianceError(model, (1, 4, 4), [(ident, rot90, 0.0, 1.0), (ident, rot90, err / 2, 3.0)], num_funcs=2)
    assert two(x).item() == pytest.approx(err + 3.0 * err / 2, rel=1e-5)


# -- 3-tuples: the same draw on both sides ------------------------------------------------------------
def random_rotation(t: torch.Tensor) -> torch.Tensor:
    """A plain random callable: one angle per row from torch's global generator."""
    angles = torch.rand(t.shape[0], dtype=torch.float64) * 360.0
    return tz.build({"rotate": {"degrees": [0, 360]}}).apply(t, angles)


def test_plain_random_callable_is_really_random() -> None:
    x = torch.rand(4, 1, 6, 6)
    assert not torch.equal(random_rotation(x), random_rotation(x))


@pytest.mark.parametrize(
    "f",
    [{"rotate": {"degrees": [-180, 180]}}, tz.build({"rotate": {"degrees": [-30, 30]}}), random_rotation],
    ids=["mapping", "transform", "plain-callable"],
)
def test_three_tuple_uses_the_same_draw_on_both_sides(f) -> None:
    torch.manual_seed(0)
    reg = EquivarianceError(nn.Identity(), (1, 6, 6), [(f, 0.0, 1.0)], n=128)
    assert reg().item() == 0.0
    # A linear pointwise model commutes with any rotation up to rounding.
    reg2 = EquivarianceError(nn.Conv2d(1, 3, 1, bias=False), (1, 6, 6), [(f, 0.0, 1.0)], n=128)
    assert reg2().item() < 1e-5


def test_three_tuple_random_callable_advances_rng_once() -> None:
    torch.manual_seed(5)
    reg = EquivarianceError(nn.Identity(), (1, 6, 6), [(random_rotation, 0.0, 1.0)], n=8)
    reg()
    after = torch.rand(3)
    torch.manual_seed(5)
    x = torch.rand(8, 1, 6, 6)
    random_rotation(x)
    assert torch.equal(torch.rand(3), after)


def test_three_tuple_with_different_output_shape() -> None:
    torch.manual_seed(0)
    logits = nn.Sequential(nn.Flatten(), nn.Linear(36, 10))
    reg = EquivarianceError(logits, (1, 6, 6), [("identity", 0.0, 1.0)], n=16)
    assert reg().item() == 0.0
    maps = nn.Conv2d(1, 2, 1, bias=False)  # (n, 1, 6, 6) -> (n, 2, 6, 6), rot90-equivariant
    reg = EquivarianceError(maps, (1, 6, 6), [("rot90", 0.0, 1.0), (rot90, 0.0, 1.0)], n=16, num_funcs=2)
    assert reg().item() < 1e-6


# -- the original's faults, fixed --------------------------------------------------------------------
def test_model_of_x_is_computed_once_per_call() -> None:
    model = Counting(conv_model())
    checks = [(ident, rot90, 0.0, 1.0), (hflip, 0.0, 1.0), ("identity", "vflip", 0.0, 1.0)]
    reg = EquivarianceError(model, (1, 4, 4), checks, n=8, num_funcs=3)
    reg()
    assert model.calls == 1 + 3  # the original calls the model 2 * 3 times
    model.calls = 0
    reg2 = EquivarianceError(model, (1, 4, 4), checks, n=8, num_funcs=2)
    reg2()
    assert model.calls == 1 + 2


def test_three_tuples_never_feed_outputs_back_as_inputs() -> None:
    model = Counting(conv_model())
    torch.manual_seed(0)
    x = torch.rand(8, 1, 4, 4)
    both = EquivarianceError(model, (1, 4, 4), [(rot90, 0.0, 1.0), (hflip, 0.0, 1.0)], num_funcs=2)
    total = both(x)
    for batch in model.seen:  # every model call saw x or a transform of x, never outputs
        assert any(torch.equal(batch, g(x)) for g in (ident, rot90, hflip))
    single = [EquivarianceError(model, (1, 4, 4), [(g, 0.0, 1.0)])(x) for g in (rot90, hflip)]
    assert total.item() == pytest.approx(sum(s.item() for s in single), rel=1e-6)


def test_calling_with_points_keeps_n() -> None:
    model = Counting(Square())
    reg = EquivarianceError(model, (1, 4, 4), [("rot90", 0.0, 1.0)], n=5)
    reg(torch.rand(7, 1, 4, 4))
    assert reg.n == 5
    model.seen.clear()
    reg()
    assert model.seen[0].shape == (5, 1, 4, 4)


def test_float64_model() -> None:
    model = Counting(conv_model(torch.float64))
    reg = EquivarianceError(model, (1, 4, 4), [(ident, rot90, 0.0, 1.0), ("hflip", 0.0, 1.0)], n=6, num_funcs=2)
    out = reg()
    assert out.dtype == torch.float64
    assert all(b.dtype == torch.float64 for b in model.seen)
    model.seen.clear()
    assert reg(torch.rand(3, 1, 4, 4, dtype=torch.float32)).dtype == torch.float64  # points are cast
    assert model.seen[0].dtype == torch.float64


def test_float32_distance_stays_float32() -> None:
    reg = EquivarianceError(conv_model(), (1, 4, 4), [(ident, rot90, 0.0, 1.0)], n=4)
    assert reg().dtype == torch.float32


def test_parameter_free_models() -> None:
    reg = EquivarianceError(PixelMax(), (1, 4, 4), [("identity", "rot90", 0.0, 1.0)], n=4)
    assert reg().item() == 0.0 and reg().dtype == torch.get_default_dtype()
    assert EquivarianceError(Square(), (1, 4, 4), [("rot90", 0.0, 1.0)], n=4)().item() == 0.0
    model = Counting(BufferOnly())
    reg = EquivarianceError(model, (1, 4, 4), [("identity", "rot90", 0.0, 1.0)], n=4)
    assert reg().item() == 0.0
    assert model.seen[0].dtype == torch.float64


def test_integer_inputs_are_not_cast() -> None:
    emb = nn.Embedding(5, 3)
    model = nn.Sequential(emb, nn.Flatten())
    reg = EquivarianceError(model, (4,), [(ident, lambda t: t, 0.0, 1.0)])
    out = reg(torch.tensor([[0, 1, 2, 3], [4, 3, 2, 1]]))
    assert out.item() == 0.0


# -- bounds -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bounds",
    [
        [[[[-1.0, 0.0]]], [[[10.0, 12.0]]]],  # shape (2, 1, 1, 2): one (lo, hi) per channel
        np.array([[[[-1.0, 0.0]]], [[[10.0, 12.0]]]]),
        torch.tensor([[[[-1.0, 0.0]]], [[[10.0, 12.0]]]]),
    ],
    ids=["nested-list", "numpy", "tensor"],
)
def test_bounds_per_channel(bounds) -> None:
    model = Counting(PixelMax())
    reg = EquivarianceError(model, (2, 3, 3), [("identity", "rot90", 0.0, 1.0)], n=500, bounds=bounds)
    reg()
    x = model.seen[0]
    assert x.shape == (500, 2, 3, 3)
    assert x[:, 0].min() >= -1 and x[:, 0].max() <= 0 and x[:, 0].max() > -0.05
    assert x[:, 1].min() >= 10 and x[:, 1].max() <= 12 and x[:, 1].min() < 10.1


def test_bounds_pair() -> None:
    reg = EquivarianceError(PixelSum(), (3,), [(ident, 0.0, 1.0)], n=1000, bounds=[-3, -2])
    x = reg.sample_points()
    assert x.shape == (1000, 3) and x.min() >= -3 and x.max() <= -2


@pytest.mark.parametrize(
    "bounds", [[0, 1, 2], 1.0, [[0, 1], [0, 1], [0, 1]], [1, 0], [0, float("inf")], [[0, 1], [0]]]
)
def test_bad_bounds(bounds) -> None:
    with pytest.raises(ValueError, match="bounds"):
        EquivarianceError(PixelSum(), (1, 4, 4), [("rot90", 0.0, 1.0)], bounds=bounds)


# -- choosing checks --------------------------------------------------------------------------------
def recorder(log: list[int], k: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def f(t: torch.Tensor) -> torch.Tensor:
        log.append(k)
        return t

    return f


def test_num_funcs_picks_distinct_checks() -> None:
    log: list[int] = []
    checks = [(ident, recorder(log, k), 0.0, 1.0) for k in range(3)]
    reg = EquivarianceError(PixelSum(), (1, 2, 2), checks, num_funcs=2)
    seen = set()
    torch.manual_seed(0)
    for _ in range(60):
        log.clear()
        reg()
        assert len(log) == 2 and log[0] != log[1]
        seen.add(tuple(log))
    assert seen == {(0, 1), (0, 2), (1, 2)}


def test_num_funcs_all_in_order_and_zero() -> None:
    log: list[int] = []
    checks = [(ident, recorder(log, k), 0.0, 1.0) for k in range(3)]
    for nf in (3, 10, "all", None):
        log.clear()
        EquivarianceError(PixelSum(), (1, 2, 2), checks, num_funcs=nf)()
        assert log == [0, 1, 2]
    model = Counting(PixelSum())
    out = EquivarianceError(model, (1, 2, 2), checks, num_funcs=0)()
    assert out.dim() == 0 and out.item() == 0.0 and model.calls == 0
    out = EquivarianceError(model, (1, 2, 2), [])()
    assert out.dim() == 0 and out.item() == 0.0


def test_torch_seed_reproduces_everything() -> None:
    checks = [
        ({"rotate": {"degrees": [-40, 40]}}, 0.0, 1.0),
        (random_rotation, 0.0, 1.0),
        ("identity", {"shift": {"dx": [-2, 2]}}, 0.0, 1.0),
        (ident, hflip, 0.0, 2.0),
    ]
    reg = EquivarianceError(nn.Conv2d(1, 1, 3, padding=1), (1, 6, 6), checks, n=16, num_funcs=2)
    torch.manual_seed(7)
    a = [reg().item() for _ in range(5)]
    torch.manual_seed(7)
    b = [reg().item() for _ in range(5)]
    assert a == b
    assert len(set(a)) > 1


# -- gradients ----------------------------------------------------------------------------------------
def test_gradient_reaches_weights() -> None:
    model = conv_model()
    reg = EquivarianceError(model, (1, 4, 4), [(ident, rot90, 0.0, 1.0), ("hflip", 0.0, 1.0)], n=16, num_funcs=2)
    loss = reg()
    assert loss.grad_fn is not None and loss.dim() == 0
    loss.backward()
    assert model.weight.grad is not None
    assert torch.isfinite(model.weight.grad).all() and model.weight.grad.abs().sum() > 0


def test_gradient_finite_at_exact_equivariance() -> None:
    lin = nn.Linear(1, 3)
    model = nn.Sequential(PixelMax(), nn.Flatten(), nn.Linear(2, 1), lin)
    reg = EquivarianceError(model, (1, 4, 4), [("identity", "rot90", 0.0, 1.0)], n=8)
    loss = reg()
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.isfinite(lin.weight.grad).all()


def test_gradient_through_given_points() -> None:
    x = torch.rand(4, 1, 4, 4, requires_grad=True)
    EquivarianceError(conv_model(), (1, 4, 4), [(ident, rot90, 0.0, 1.0)])(x).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# -- distances ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "dist, name",
    [(1, "l1"), (2, "l2"), (2.0, "l2"), (3, "lp:3"), ("inf", "linf"), (math.inf, "linf"), ("l2", "l2"),
     ("relative_l2", "relative_l2"), ("kl_logits", "kl_logits"), ("lp:3", "lp:3"),
     ("cross_entropy_logits", "cross_entropy_logits")],
)
def test_named_distances(dist, name: str) -> None:
    model = linear_model()
    x = torch.rand(8, 1, 4, 4)
    reg = EquivarianceError(model, (1, 4, 4), [(ident, rot90, 0.0, 1.0)], dist=dist)
    with torch.no_grad():
        want = parse_distance(name)(model(x), model(rot90(x))).mean()
        got = reg(x)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_cross_entropy_on_probabilities() -> None:
    model = nn.Sequential(linear_model(), nn.Softmax(dim=-1))
    x = torch.rand(8, 1, 4, 4)
    reg = EquivarianceError(model, (1, 4, 4), [(ident, rot90, 0.0, 1.0)], dist="cross_entropy")
    with torch.no_grad():
        a, b = model(x), model(rot90(x))
        want = torch.linalg.vector_norm(a.log() - b.log(), dim=1).mean()
        assert reg(x).item() == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.parametrize(
    "fn",
    [lambda a, b: ((a - b) ** 2).sum(), lambda a, b: ((a - b) ** 2).sum(dim=1), lambda a, b: (a - b) ** 2],
    ids=["scalar", "per-row", "elementwise"],
)
def test_callable_distance_takes_the_mean(fn) -> None:
    model = linear_model()
    x = torch.rand(8, 1, 4, 4)
    reg = EquivarianceError(model, (1, 4, 4), [(ident, rot90, 0.0, 1.0)], dist=fn)
    with torch.no_grad():
        want = torch.mean(fn(model(x), model(rot90(x))))
        assert reg(x).item() == pytest.approx(want.item(), rel=1e-6)
    assert reg(x).grad_fn is not None


def test_unknown_distance_suggests() -> None:
    with pytest.raises(ValueError, match="did you mean 'kl_logits'"):
        EquivarianceError(PixelSum(), (1, 4, 4), [("rot90", 0.0, 1.0)], dist="kl_logit")


@pytest.mark.parametrize("dist", [0.5, 0, -1, True, float("nan"), "lp:0.5", None])
def test_invalid_distances(dist) -> None:
    with pytest.raises(ValueError, match="dist"):
        EquivarianceError(PixelSum(), (1, 4, 4), [("rot90", 0.0, 1.0)], dist=dist)


# -- validation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad, match",
    [
        ((rot90, 0.0), "expected 4 elements"),
        ((ident, rot90, 0.0, 1.0, 5), "expected 4 elements"),
        ((42, 0.0, 1.0), "callable"),
        ((ident, 3, 0.0, 1.0), "callable"),
        ((rot90, -0.1, 1.0), "epsilon"),
        ((rot90, 0.1, -1.0), "lambda_eq"),
        ((rot90, "a", 1.0), "epsilon"),
        (("rot9", 0.0, 1.0), "did you mean 'rot90'"),
        ({"rot90": {}}, "expected a tuple"),
    ],
)
def test_bad_transform_tuples_name_the_index(bad, match: str) -> None:
    with pytest.raises(ValueError, match=r"transforms\[1\]") as info:
        EquivarianceError(PixelSum(), (1, 4, 4), [("rot90", 0.0, 1.0), bad])
    assert match in str(info.value)


@pytest.mark.parametrize(
    "kwargs", [{"n": 0}, {"n": 2.5}, {"num_funcs": -1}, {"num_funcs": "some"}, {"shape": "abc"}]
)
def test_bad_arguments(kwargs) -> None:
    args = {"model": PixelSum(), "shape": (1, 4, 4), "transforms": [("rot90", 0.0, 1.0)], **kwargs}
    with pytest.raises(ValueError):
        EquivarianceError(**args)


def test_empty_batch_refused() -> None:
    reg = EquivarianceError(PixelSum(), (1, 4, 4), [("rot90", 0.0, 1.0)])
    with pytest.raises(ValueError, match="non-empty"):
        reg(torch.zeros(0, 1, 4, 4))


def test_alias_and_module_behaviour() -> None:
    assert EquivarianceRegularizer is EquivarianceError
    model = conv_model()
    reg = EquivarianceRegularizer(model, [1, 4, 4], [(ident, rot90, 0.0, 1.0)])
    assert reg.shape == (1, 4, 4)
    assert set(dict(reg.named_parameters())) == {"model.weight", "model.bias"}


# -- the original's attributes are live: reassigning them takes effect -----------------------------------
def test_reassigned_attributes_take_effect_on_the_next_call() -> None:
    model = linear_model()
    x = torch.rand(8, 1, 4, 4)
    reg = EquivarianceError(model, (1, 4, 4), [(ident, rot90, 0.0, 1.0)], dist=2)
    base = reg(x)
    reg.transforms = [(ident, rot90, 0.0, 10.0)]  # anneal the weight, as with the original
    assert torch.allclose(reg(x), 10 * base)
    reg.dist = 1
    assert torch.equal(reg(x), EquivarianceError(model, (1, 4, 4), [(ident, rot90, 0.0, 10.0)], dist=1)(x))
    reg.transforms[0] = (ident, hflip, 0.0, 1.0)  # in place, as the original reads it every call
    assert torch.equal(reg(x), EquivarianceError(model, (1, 4, 4), [(ident, hflip, 0.0, 1.0)], dist=1)(x))
    reg.bounds = [5, 6]
    assert reg.bounds == [5, 6]
    assert ((reg.sample_points(64) >= 5) & (reg.sample_points(64) < 6)).all()


def test_module_distances_and_parameter_bounds_still_work() -> None:
    # properties behind nn.Module.__setattr__: a Module dist was registered as a submodule and
    # never parsed, a Parameter bound clashed with the property's name
    model = linear_model()
    x = torch.rand(8, 1, 4, 4)
    want = EquivarianceError(model, (1, 4, 4), [(ident, rot90, 0.0, 1.0)], dist=1)(x)
    reg = EquivarianceError(model, (1, 4, 4), [(ident, rot90, 0.0, 1.0)],
                            dist=lambda a, b: (a - b).abs().sum(dim=1))
    reg.dist = nn.L1Loss(reduction="none")  # per element: the mean differs from l1 by 1/5
    assert torch.allclose(reg(x) * 5, want)
    bounds = nn.Parameter(torch.tensor([2.0, 3.0]))
    reg = EquivarianceError(model, (1, 4, 4), [(ident, rot90, 0.0, 1.0)], bounds=bounds, n=64)
    points = reg.sample_points()
    assert (points >= 2).all() and (points < 3).all()
    assert set(dict(reg.named_parameters())) == {"model.1.weight", "model.1.bias"}  # bounds are not trained


def test_bounds_are_copied_when_assigned() -> None:
    b = [0, 1]
    reg = EquivarianceError(linear_model(), (1, 4, 4), [(ident, rot90, 0.0, 1.0)], bounds=b, n=64)
    b[0] = 5  # the caller's list changes; the regularizer's bounds, and its points, do not
    assert reg.bounds == [0, 1] and (reg.sample_points() < 1).all()


def test_transforms_are_parsed_again_only_when_they_change(monkeypatch) -> None:
    import eqaudit.regularizer.arguments as arguments

    calls = []
    inner = arguments._parse_check
    monkeypatch.setattr(arguments, "_parse_check", lambda i, t: calls.append(i) or inner(i, t))
    checks = [[ident, rot90, 0.0, 1.0], (hflip, 0.0, 1.0)]
    reg = EquivarianceError(linear_model(), (1, 4, 4), checks, num_funcs=2)
    reg()
    reg()
    assert calls == [0, 1]
    checks[0][3] = 2.0  # a list-valued check changed in place: the reg holds the same list
    reg()
    assert calls == [0, 1, 0, 1]


@pytest.mark.parametrize(("name", "value", "match"), [
    ("dist", "l3", "unknown distance"),
    ("transforms", [(ident, rot90, -1.0, 1.0)], r"transforms\[0\]: epsilon"),
    ("transforms", "rot90", "must be a list"),
    ("bounds", [1, 0], "lo > hi"),
    ("shape", (1, -4, 4), "non-negative"),
    ("shape", (1, 5, 5), "do not broadcast"),  # the bounds below are one (lo, hi) per element of 1x4x4
])
def test_bad_reassignment_is_refused_and_the_old_value_stays(name, value, match) -> None:
    bounds = torch.tensor([0.0, 1.0]).expand(1, 4, 4, 2).clone()
    reg = EquivarianceError(linear_model(), (1, 4, 4), [(ident, rot90, 0.0, 1.0)], bounds=bounds)
    x = torch.rand(8, 1, 4, 4)
    before = reg(x)
    old = getattr(reg, name)
    with pytest.raises(ValueError, match=match):
        setattr(reg, name, value)
    assert getattr(reg, name) is old
    assert torch.equal(reg(x), before)


# -- the original package, where it is correct --------------------------------------------------------
def original_class():
    mod = pytest.importorskip("equivariance_regularizer")
    return mod.EquivarianceRegularizer


@pytest.mark.parametrize("dist", [1, 2, 3, "inf", "cross_entropy_logits", lambda a, b: (a - b).abs().sum(dim=1)])
@pytest.mark.parametrize("bounds", [[0, 1], [-2, 3], [[-1, 1]]])
def test_matches_original_four_tuple(dist, bounds) -> None:
    Original = original_class()
    model = linear_model()
    checks = [(lambda y: y * 1.0, rot90, 0.05, 2.0)]
    ours = EquivarianceError(model, (1, 4, 4), checks, dist=dist, n=64, bounds=bounds)
    theirs = Original(model, (1, 4, 4), checks, dist=dist, n=64, bounds=bounds)
    torch.manual_seed(11)
    a = ours()
    torch.manual_seed(11)
    b = theirs()
    assert a.item() == pytest.approx(b.item(), rel=1e-5, abs=1e-7)
    x = torch.rand(9, 1, 4, 4)
    assert ours(x).item() == pytest.approx(theirs(x).item(), rel=1e-5, abs=1e-7)


def test_matches_original_cross_entropy_on_probabilities() -> None:
    Original = original_class()
    model = nn.Sequential(linear_model(), nn.Softmax(dim=-1))
    checks = [(ident, rot90, 0.0, 1.0)]
    x = torch.rand(16, 1, 4, 4)
    ours = EquivarianceError(model, (1, 4, 4), checks, dist="cross_entropy")
    theirs = Original(model, (1, 4, 4), checks, dist="cross_entropy")
    assert ours(x).item() == pytest.approx(theirs(x).item(), rel=1e-5)


def test_matches_original_single_three_tuple() -> None:
    Original = original_class()
    model = conv_model()  # equal input and output shapes: the original's 3-tuple trick works
    checks = [(rot90, 0.0, 1.5)]
    ours = EquivarianceError(model, (1, 4, 4), checks, n=32)
    theirs = Original(model, (1, 4, 4), checks, n=32)
    torch.manual_seed(3)
    a = ours()
    torch.manual_seed(3)
    b = theirs()
    assert a.item() == pytest.approx(b.item(), rel=1e-5)


def test_original_counts_forward_calls_twice() -> None:
    """Documents the fixed fault: the original recomputes model(x) for every check."""
    Original = original_class()
    model = Counting(conv_model())
    checks = [(ident, rot90, 0.0, 1.0), (ident, hflip, 0.0, 1.0)]
    Original(model, (1, 4, 4), checks, n=4, num_funcs=2)()
    assert model.calls == 4
    model.calls = 0
    EquivarianceError(model, (1, 4, 4), checks, n=4, num_funcs=2)()
    assert model.calls == 3


# -- CUDA (skipped without a GPU) ---------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda(dtype: torch.dtype) -> None:
    def cuda_random_rotation(t: torch.Tensor) -> torch.Tensor:
        angles = torch.rand(t.shape[0], dtype=torch.float64, device=t.device) * 360.0
        return tz.build({"rotate": {"degrees": [0, 360]}}).apply(t, angles)

    torch.manual_seed(0)
    model = Counting(nn.Conv2d(1, 2, 1, bias=False).to("cuda", dtype))
    checks = [(cuda_random_rotation, 0.0, 1.0), ({"rotate": {"degrees": [-90, 90]}}, 0.0, 1.0), (ident, rot90, 0.0, 1.0)]
    reg = EquivarianceError(model, (1, 6, 6), checks, n=64, num_funcs=3, bounds=torch.tensor([-1.0, 1.0]))
    out = reg()
    assert out.device.type == "cuda" and out.dtype == dtype and out.dim() == 0
    assert all(b.device.type == "cuda" and b.dtype == dtype for b in model.seen)
    assert model.calls == 4
    out.backward()
    assert torch.isfinite(model.inner.weight.grad).all()
    ident_reg = EquivarianceError(nn.Identity(), (1, 6, 6), [(cuda_random_rotation, 0.0, 1.0)], n=64)
    assert ident_reg(torch.rand(64, 1, 6, 6, device="cuda")).item() == 0.0
