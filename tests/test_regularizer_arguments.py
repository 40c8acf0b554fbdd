"""EquivarianceError refuses arguments it used to take and then compute nonsense with (or fail
on with a raw torch error): each is a ValueError or TypeError naming the argument."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from eqaudit import EquivarianceError
from eqaudit.testing import assert_equivariant


def rot90(t: torch.Tensor) -> torch.Tensor:
    return torch.rot90(t, 1, (-2, -1))


def ident(t: torch.Tensor) -> torch.Tensor:
    return t


def conv() -> nn.Module:
    torch.manual_seed(0)
    return nn.Conv2d(1, 2, 3, padding=1)


@pytest.mark.parametrize("field", ["epsilon", "lambda_eq"])
def test_an_infinite_hinge_or_weight_is_refused(field: str) -> None:
    check = (ident, rot90, math.inf, 1.0) if field == "epsilon" else (ident, rot90, 0.0, math.inf)
    with pytest.raises(ValueError, match=rf"transforms\[0\]: {field} must be finite"):
        EquivarianceError(conv(), (1, 4, 4), [check])


def test_an_input_transform_dropping_rows_is_refused() -> None:
    reg = EquivarianceError(conv(), (1, 4, 4), [(ident, lambda t: t[:1], 0.0, 1.0)], n=8)
    with pytest.raises(ValueError, match=r"transforms\[0\]: f_in: .* shape \[1, 1, 4, 4\] for a batch of 8"):
        reg()


def test_an_output_transform_of_the_wrong_shape_is_refused() -> None:
    reg = EquivarianceError(conv(), (1, 4, 4), [(lambda t: t[:, :1], rot90, 0.0, 1.0)], n=8)
    with pytest.raises(ValueError, match=r"transforms\[0\]: f_out: output transform gives shape \[1, 4, 4\]"):
        reg()


def test_a_transform_returning_none_is_a_type_error() -> None:
    reg = EquivarianceError(conv(), (1, 4, 4), [(ident, lambda t: None, 0.0, 1.0)], n=8)
    with pytest.raises(TypeError, match=r"transforms\[0\]: f_in: .*returned NoneType, expected a tensor"):
        reg()


def test_a_model_returning_a_tuple_is_a_type_error() -> None:
    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    reg = EquivarianceError(Pair(), (1, 4, 4), [("rot90", 0.0, 1.0)], n=4)
    with pytest.raises(TypeError, match="model: the model returned tuple, expected a tensor"):
        reg()


@pytest.mark.parametrize("bounds", [[-1e308, 1e308], [[-1e308, 1e308]]])
def test_bounds_whose_width_overflows_are_refused(bounds) -> None:
    with pytest.raises(ValueError, match="bounds: hi - lo overflows"):
        EquivarianceError(conv(), (1, 4, 4), [("rot90", 0.0, 1.0)], bounds=bounds)


def test_bounds_overflowing_the_models_dtype_are_refused() -> None:
    reg = EquivarianceError(conv(), (1, 4, 4), [("rot90", 0.0, 1.0)], bounds=[-3e38, 3e38])  # float32 model
    with pytest.raises(ValueError, match="bounds: the box overflows the model's dtype torch.float32"):
        reg()
    assert torch.isfinite(EquivarianceError(conv().double(), (1, 4, 4), [("rot90", 0.0, 1.0)],
                                            bounds=[-3e38, 3e38])()).all()  # float64 holds it


def test_points_without_the_batch_dimension_are_refused() -> None:
    reg = EquivarianceError(conv(), (1, 4, 4), [("rot90", 0.0, 1.0)])
    with pytest.raises(ValueError, match=r"one sample without the batch dimension: use inputs.unsqueeze\(0\)"):
        reg(torch.rand(1, 4, 4))
    with pytest.raises(ValueError, match=r"inputs must be a batch of shape \(m, \*shape\) = \(m, 1, 4, 4\)"):
        reg(torch.rand(3, 1, 5, 5))
    assert reg(torch.rand(1, 1, 4, 4)).dim() == 0


@pytest.mark.parametrize("n", [0, -3])
def test_a_reassigned_sample_count_below_one_is_refused(n: int) -> None:
    reg = EquivarianceError(conv(), (1, 4, 4), [("rot90", 0.0, 1.0)], n=4)
    with pytest.raises(ValueError, match=f"n must be an integer >= 1, got {n}"):
        reg.n = n
    assert reg.n == 4 and reg().dim() == 0


def test_a_failing_model_names_the_model_not_a_raw_torch_error() -> None:
    reg = EquivarianceError(nn.Linear(3, 2), (1, 4, 4), [("rot90", 0.0, 1.0)], n=4)
    with pytest.raises(ValueError, match=r"model: the model failed on a batch of shape \[4, 1, 4, 4\]"):
        reg()


@pytest.mark.parametrize("key", ["rtol", "atol"])
def test_assert_equivariant_refuses_an_infinite_tolerance(key: str) -> None:
    with pytest.raises(TypeError, match=f"{key} must be a finite number >= 0, got inf"):
        assert_equivariant(conv(), [{"input": "rot90"}], shape=[1, 4, 4], **{key: math.inf})
