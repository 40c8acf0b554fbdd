"""Transforms on inputs they cannot act on raise a TransformError that says so (never a raw torch
error), and ``probe_transforms`` turns it into an error at the check's key, so that validate refuses
what measure would refuse for a spec-level reason."""

from __future__ import annotations

import pytest
import torch

import transforms_zoo as tz
from eqaudit.errors import EqauditError
from eqaudit.spec import probe_transforms, spec_from_dict
from transforms_zoo import SampleRNG, TransformError
from transforms_zoo.group import finite_group


def _probe(shape, check):
    probe_transforms(spec_from_dict({"input": {"shape": shape}, "checks": [check]}))


@pytest.mark.parametrize("shape, check, key, words", [
    ([10], {"input": {"permute": {"perm": [2, 0, 1], "dim": -1}}}, "checks[0].input", "3 entries"),
    ([4, 4, 6], {"both": "transpose", "mask": "valid"}, "checks[0].mask", "turns (H, W) = [4, 6] into [6, 4]"),
    ([1, 4, 6], {"input": "rot90", "mask": "valid"}, "checks[0].mask", "[4, 6] into [6, 4]"),
    ([10], {"input": "hflip", "mask": "valid"}, "checks[0].input", "one sample has shape [10]"),
    ([10], {"both": {"shift": {"dx": 1}}, "mode": "lie"}, "checks[0].both", "one sample has shape [10]"),
    ([5], {"input": "rotate3d"}, "checks[0].input", "one sample has shape [5]"),
    ([4, 4, 6], {"both": {"regular_c4": {"k": [0, 3]}}}, "checks[0].both", "odd and even quarter turns"),
    ([2, 4, 4], {"both": {"field": {"perm": [1, 0, 2]}}}, "checks[0].both", "sample of shape [2, 4, 4]"),
    ([4, 4], {"group": "S3"}, "checks[0].group", "perm has 3 entries"),
])
def test_probe_names_the_key_of_a_transform_that_cannot_act(shape, check, key, words):
    with pytest.raises(EqauditError) as info:
        _probe(shape, check)
    assert info.value.key == key and words in info.value.message


@pytest.mark.parametrize("shape, check", [
    ([1, 4, 6], {"input": "hflip", "mask": "valid"}),
    ([1, 4, 6], {"group": "C4"}),
    ([3, 4, 4], {"both": "rot90", "mask": "valid"}),
    ([6, 3], {"both": "rotate3d"}),
    ([4, 4, 4], {"both": {"regular_c4": {"k": [0, 3]}}}),
    ([1, 5, 5], {"input": {"rotate": {"degrees": 10}}, "mode": "lie"}),
])
def test_probe_accepts_what_can_act(shape, check):
    _probe(shape, check)


def test_a_group_on_non_square_maps_is_a_transform_error():
    """Drawing rotation-group elements for one batch of non-square maps was a raw RuntimeError."""
    group = finite_group("C4")
    x = torch.zeros(8, 1, 4, 6)
    with pytest.raises(TransformError, match="group C4 turns samples of shape"):
        group.apply(x, torch.arange(8) % 4)
    assert torch.equal(group.apply(x, torch.tensor([0, 2] * 4)), x)


def test_a_random_quarter_turn_range_refuses_non_square_maps_whatever_it_drew():
    """regular_c4 with k: [0, 3] passed when a batch happened to draw only even turns."""
    t = tz.build({"regular_c4": {"k": [0, 3]}})
    with pytest.raises(TransformError, match="odd and even"):
        t.apply(torch.zeros(2, 4, 4, 6), torch.tensor([0, 2]))


def test_rotating_an_empty_image_gives_it_back():
    """A zero-size H or W divided by zero computing the aspect ratio."""
    for degrees in (30, [-10, 10]):
        t = tz.build({"rotate": {"degrees": degrees}})
        x = torch.zeros(2, 1, 0, 4)
        assert t.apply(x, t.sample(SampleRNG.for_range(0, 0, 2))).shape == x.shape
    lie = tz.build({"rotate": {"degrees": 1}}).lie_path(torch.zeros(2, 1, 4, 0), torch.zeros(2))
    assert lie.shape == (2, 1, 4, 0)


def test_probe_refuses_user_code_that_drops_the_batch_rows(project):
    (project / "code.py").write_text("def first(x):\n    return x[0]\n\ndef boom(x):\n    raise RuntimeError('no')\n")
    for ref, words in (("code.py:first", "not one tensor row per sample"), ("code.py:boom", "RuntimeError: no")):
        spec = spec_from_dict({"input": {"shape": [3]}, "checks": [{"input": ref}]}, base_dir=project)
        with pytest.raises(EqauditError) as info:
            probe_transforms(spec)
        assert info.value.key == "checks[0].input" and words in info.value.message


@pytest.mark.parametrize("config, shape, words", [
    ({"rotate3d": {"axis": [0, 0, 1], "degrees": 5}}, (1, 4, 4), "one sample has shape [1, 4, 4]"),
    ({"rotate3d": {"axis": [0, 0, 1], "degrees": 5}}, (7,), "one sample has shape [7]"),
])
def test_lie_paths_check_the_shape_they_act_on(config, shape, words):
    """rotate3d's Lie path reshaped any tensor into points (a raw RuntimeError)."""
    with pytest.raises(TransformError, match=words.replace("[", r"\[").replace("]", r"\]")):
        tz.build(config).lie_path(torch.zeros(2, *shape), torch.zeros(2))


def test_a_lie_shift_of_an_empty_frame_gives_it_back():
    """fftfreq(0) raised 'Invalid number of data points (0)'."""
    x = torch.zeros(2, 1, 0, 4)
    assert tz.build({"shift": {"dx": 1}}).lie_path(x, torch.zeros(2)).shape == x.shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_rotating_one_pixel_keeps_it_in_every_precision(dtype):
    """A 1x1 image in half precision on the CPU raised NotImplementedError in affine_grid."""
    x = torch.rand(3, 2, 1, 1).to(dtype)
    for config in ({"rotate": {"degrees": 33}}, {"scale": {"factor": 0.7}}):
        assert torch.equal(tz.build(config)(x), x)
