"""Property test of the zoo: on any batch shape and floating dtype, every built-in transform (and
every finite group, and every Lie path) either acts, keeping one row per sample, or raises a
TransformError that says why; never a raw torch error."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import transforms_zoo as tz
from transforms_zoo import SampleRNG, TransformError
from transforms_zoo.group import finite_group

CONFIGS = [
    "identity", "rot90", "hflip", "vflip", "transpose", "flip", {"flip": {"dim": -3}},
    {"shift": {"dx": 1}}, {"shift": {"dx": [-2, 2], "dy": [-1, 1]}}, {"shift": {"dx": [-1, 1], "mode": "zeros"}},
    {"rotate": {"degrees": 30}}, {"rotate": {"degrees": [-10, 10], "padding": "reflection"}},
    {"rotate": {"degrees": 90}}, {"scale": {"factor": 1.2}}, {"scale": {"factor": [0.8, 1.2], "log_uniform": True}},
    {"permute": {"perm": [2, 0, 1]}}, {"permute": {"perm": [1, 0], "dim": -1}}, {"permute": {}},
    {"permute": {"dim": 3}}, {"roll": {"shift": 1}}, {"roll": {"shift": [-2, 2], "dim": 0}},
    {"gaussian_noise": {"std": 0.1}}, {"gain": {"factor": [0.5, 2]}},
    "rotate3d", {"rotate3d": {"axis": [0, 0, 1], "degrees": 30}}, {"rotate3d": {"max_degrees": 10}},
    "regular_c4", {"regular_c4": {"k": [0, 3], "layout": "group"}}, {"field": {"perm": [1, 0]}},
    {"field": {"matrix": [[0, 1], [-1, 0]], "spatial": "hflip"}}, {"field": {"spatial": "transpose"}},
    {"irreps": {"irreps": "xyz"}},
]
GROUPS = ["C4", "D4", "C8", "S3", {"permutations": {"k": 2, "dim": -1}}]
LIE = [{"shift": {"dx": 1, "dy": 2}}, {"shift": {"dy": [-1, 1]}}, {"rotate": {"degrees": 5}},
       {"scale": {"factor": 1.1}}, {"rotate3d": {"axis": [1, 0, 0], "degrees": 5}}]
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]

shapes = st.lists(st.integers(0, 6), min_size=0, max_size=4)


def _acts_or_says_why(act, x: torch.Tensor) -> None:
    try:
        out = act(x)
    except TransformError as exc:
        assert str(exc)
        return
    assert isinstance(out, torch.Tensor) and out.shape[0] == x.shape[0]


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(config=st.sampled_from(CONFIGS), shape=shapes, rows=st.integers(1, 3), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**31))
def test_a_transform_acts_or_raises_a_transform_error(config, shape, rows, dtype, seed):
    t = tz.build(config)
    x = torch.zeros(rows, *shape, dtype=dtype)
    _acts_or_says_why(lambda x: t.apply(x, t.sample(SampleRNG.for_range(seed, 0, rows))), x)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(group=st.sampled_from(GROUPS), shape=shapes, rows=st.integers(1, 3), seed=st.integers(0, 2**31))
def test_a_group_acts_or_raises_a_transform_error(group, shape, rows, seed):
    g = finite_group(group)
    x = torch.zeros(rows, *shape)
    _acts_or_says_why(lambda x: g.apply(x, g.sample(SampleRNG.for_range(seed, 0, rows))), x)
    for element in g.elements:
        _acts_or_says_why(lambda x: element.apply(x, None), x)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(config=st.sampled_from(LIE), shape=shapes, rows=st.integers(1, 3),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_a_lie_path_acts_or_raises_a_transform_error(config, shape, rows, dtype):
    t = tz.build(config)
    x = torch.zeros(rows, *shape, dtype=dtype)
    _acts_or_says_why(lambda x: t.lie_path(x, torch.zeros(rows, dtype=dtype)), x)


CHECK_SIDES = [*CONFIGS, [{"shift": {"dx": 1}}, "hflip"], ["rot90", {"permute": {"perm": [1, 0], "dim": -1}}]]


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(side=st.sampled_from(CHECK_SIDES), key=st.sampled_from(["input", "both"]),
       extra=st.sampled_from([{}, {"mask": "valid"}, {"mode": "lie"}]),
       shape=st.lists(st.integers(1, 6), min_size=1, max_size=4),
       group=st.sampled_from([None, *GROUPS]))
def test_a_parsed_check_probes_cleanly_or_names_its_key(side, key, extra, shape, group):
    """What the parser accepts, the probe (validate's dry run) runs or refuses at a check's key."""
    from eqaudit.errors import EqauditError
    from eqaudit.spec import probe_transforms, spec_from_dict

    check = {"group": group} if group is not None else {key: side}
    try:
        spec = spec_from_dict({"input": {"shape": shape}, "checks": [{**check, **extra}]})
    except EqauditError as exc:
        assert exc.key and exc.key.startswith("checks[0]"), exc
        return
    try:
        probe_transforms(spec)
    except EqauditError as exc:
        assert exc.key and exc.key.startswith("checks[0]."), exc
