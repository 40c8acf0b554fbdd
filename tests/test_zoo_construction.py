"""Every transform is constructed through one parse path: declared parameters and their
defaults are parsed by their ``Param``, compositions and user callables included."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import transforms_zoo as tz
from transforms_zoo import Compose, Param, Transform, TransformError
from transforms_zoo.group import Inverted, finite_group
from transforms_zoo.params import int_or_range


class _Turns(Transform):
    name = "_turns"
    params = (Param("k", int_or_range, 1, "turns"),)

    def apply(self, x, params):
        return torch.rot90(x, self.k[0], (-2, -1))


def test_defaults_are_parsed_like_given_values():
    """A default went in unparsed (``k == 1``, not ``(1, 1)``), so subclasses parsed it again."""
    assert _Turns().k == (1, 1)
    assert _Turns(k=[0, 3]).k == (0, 3)
    assert tz.build("shift").dx == (0, 0) and tz.build("roll").shift == (1, 1)
    assert tz.build("regular_c4").k == (1, 1)


def test_compose_and_callables_validate_their_arguments():
    """``Compose`` and ``CallableTransform`` skipped ``Transform.__init__`` and took anything."""
    with pytest.raises(TransformError, match="expected a transform"):
        Compose([tz.build("rot90"), 3])
    with pytest.raises(TransformError, match="expected a callable"):
        tz.CallableTransform(42, "m:f")
    with pytest.raises(TransformError, match="expected a callable"):
        Inverted(tz.build("rot90"), None)
    c = Compose([tz.build("rot90"), tz.build("hflip")])
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert torch.equal(c(x), torch.flip(torch.rot90(x, 1, (-2, -1)), (-1,)))
    assert c.describe() == "rot90 then hflip"


def test_groups_and_inverses_describe_as_before():
    g = finite_group("D4")
    assert g.order == 8 and g.describe() == "D4" and g.exact
    inv = tz.build({"shift": {"dx": 1}}).inverse()
    assert inv.describe() == "inverse(shift(dx=1))"


def test_the_zoo_imports_without_eqaudit():
    """The zoo is a leaf: importing and using it loads no eqaudit module."""
    code = ("import sys, transforms_zoo as tz; tz.build({'rotate': {'degrees': 5}}); "
            "from transforms_zoo import group, adapters, base;"
            "print(sorted(m for m in sys.modules if m == 'eqaudit' or m.startswith('eqaudit.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_names_suggest_the_closest_without_eqaudit():
    with pytest.raises(TransformError) as info:
        tz.build({"rotate": {"degree": 1}})
    assert info.value.key == "rotate.degree" and "did you mean 'degrees'" in info.value.hint
