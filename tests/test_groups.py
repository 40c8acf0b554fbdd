"""Issue 4, item 2: exhaustive finite groups and the numerical check of the zoo's group laws."""

import json
import re

import pytest
import torch
from typer.testing import CliRunner

import transforms_zoo
from eqaudit.cli import app
from eqaudit.engine.run import audit
from eqaudit.errors import EqauditError
from eqaudit.spec import spec_from_dict
from transforms_zoo.group import finite_group


def _spec(checks, samples=2000, shape=(1, 8, 8), **extra):
    return spec_from_dict({"input": {"shape": list(shape)}, "samples": samples, "checks": checks, **extra})


def test_group_elements():
    assert finite_group("C4").element_names() == ["identity", "rot90(k=1)", "rot90(k=2)", "rot90(k=3)"]
    assert finite_group("C8").order == 8 and not finite_group("C8").exact
    d4 = finite_group("D4")
    assert d4.order == 8 and d4.exact and "hflip then rot90(k=1)" in d4.element_names()
    assert finite_group("C6").order == 6 and finite_group("D3").order == 6
    assert finite_group({"permutations": {"k": 3, "dim": -1}}).order == 6
    assert finite_group("S4").order == 24
    for bad in ("Q4", "C0", {"permutations": {"k": 9}}, {"perms": {}}, 4):
        with pytest.raises(ValueError):
            finite_group(bad)


def test_every_element_and_the_group_mean(pixel_reader):
    # Pixel (0, 0) against the pixel a rotation brings there: |U1 - U2|, mean 1/3, for k = 1, 2, 3;
    # 0 for the identity. The mean over C4 is (0 + 3 * 1/3) / 4 = 1/4.
    spec = _spec([{"name": "c4", "group": "C4", "distance": "l1", "threshold": 1}], samples=20000)
    c = audit(pixel_reader, spec).checks[0]
    assert c.ci_low <= 0.25 <= c.ci_high
    els = c.elements
    assert [e["element"] for e in els] == ["identity", "rot90(k=1)", "rot90(k=2)", "rot90(k=3)"]
    assert els[0]["mean"] == 0.0 and els[0]["passed"]
    for e in els[1:]:
        assert e["ci_low"] <= 1 / 3 <= e["ci_high"] and e["n"] == 20000
    assert c.mean == pytest.approx(sum(e["mean"] for e in els) / 4, rel=1e-12)


def test_invariant_and_equivariant_models_are_exact(pixel_sum):
    spec = _spec([{"group": "C4"}, {"group": "D4"}], samples=256)
    for c in audit(pixel_sum, spec).checks:
        assert c.mean < 1e-5 and all(e["mean"] < 1e-5 for e in c.elements)
    same = _spec([{"group": "D4", "output": "same"}, {"group": "C8", "output": "same"}], samples=128)
    report = audit(torch.nn.Identity(), same)
    assert report.checks[0].mean == 0.0 and report.checks[0].output == "D4"
    # C8 interpolates at 45 degrees: even the identity model is off, and a note says why.
    assert report.checks[1].mean == 0.0  # the identity model: both sides interpolate alike
    assert any("inexact" in n for n in report.notes)


def test_c8_invariance_of_an_invariant_model_shows_interpolation(pixel_sum):
    report = audit(pixel_sum, _spec([{"group": "C8", "threshold": 1e-5}], samples=128))
    c = report.checks[0]
    exact = [e for e in c.elements if "rot90" in e["element"] or e["element"] == "identity"]
    inexact = [e for e in c.elements if "rotate" in e["element"]]
    assert all(e["mean"] < 1e-4 for e in exact) and all(e["mean"] > 1e-2 for e in inexact)
    assert any("inexact" in n for n in report.notes)


def test_permutation_group(pixel_reader):
    class RowSum(torch.nn.Module):
        def forward(self, x):
            return x.sum(dim=-2)

    class FirstRow(torch.nn.Module):
        def forward(self, x):
            return x[:, 0, :]

    spec = _spec([{"group": {"permutations": {"k": 3, "dim": -2}}, "distance": "l1"}], samples=256, shape=(3, 4))
    assert audit(RowSum(), spec).checks[0].mean < 1e-5
    c = audit(FirstRow(), spec).checks[0]
    # 4 of the 6 permutations move another row to position 0 (|U1 - U2| per entry: 4/3 over 4 entries).
    moved = [e for e in c.elements if e["mean"] > 0]
    assert len(moved) == 4
    assert c.mean == pytest.approx(4 / 6 * 4 / 3, rel=0.1)


def test_group_checks_do_not_depend_on_batch_size_or_num_funcs_layout(pixel_reader):
    spec = _spec([{"group": "D4"}, {"input": "hflip"}], samples=700)
    a, b = audit(pixel_reader, spec, batch_size=64), audit(pixel_reader, spec, batch_size=1024)
    assert a.to_dict()["checks"] == b.to_dict()["checks"]
    json.loads(a.to_json())
    picked = audit(pixel_reader, _spec([{"group": "D4"}, {"input": "hflip"}], samples=700, num_funcs=1))
    assert sum(c.n for c in picked.checks) == 700
    assert picked.checks[0].elements[0]["n"] == picked.checks[0].n


def test_group_spec_errors():
    with pytest.raises(EqauditError, match=r"checks\[0\]\.input: 'group' replaces"):
        _spec([{"group": "C4", "input": "rot90"}])
    with pytest.raises(EqauditError, match=r"checks\[0\]\.group: unknown group"):
        _spec([{"group": "Q4"}])
    with pytest.raises(EqauditError, match=r"checks\[0\]\.output: with 'group'"):
        _spec([{"group": "C4", "output": "rot90"}])
    report = audit(torch.nn.Identity(), _spec([{"group": "S3", "output": "same"}], samples=64))
    assert report.exit_code == 2 and re.search(r"checks\[0\]\.group: 'permute'", report.checks[0].error)


def test_group_transform_samples_one_element_per_sample():
    g = finite_group("C4")
    x = torch.rand(64, 1, 4, 4)
    idx = g.sample(transforms_zoo.SampleRNG.for_range(0, 0, 64))
    y = g.apply(x, idx)
    for i in range(64):
        assert torch.equal(y[i], torch.rot90(x[i], int(idx[i]), (-2, -1)))


# -- eqaudit transforms --check ---------------------------------------------------------------------
def test_transforms_check_passes_for_the_zoo():
    r = CliRunner().invoke(app, ["transforms", "--check"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "rot90" in r.output and "composition" in r.output and "FAIL" not in r.output


def test_transforms_check_fails_a_wrong_inverse(monkeypatch):
    from transforms_zoo import base

    class Broken(transforms_zoo.Transform):
        name = "broken_shift"
        group_action = True

        def apply(self, x, params):
            return x + 1

        def inverse(self):
            return self  # wrong: x + 1 is not its own inverse

    monkeypatch.setitem(base._REGISTRY, "broken_shift", Broken)
    r = CliRunner().invoke(app, ["transforms", "--check"], env={"COLUMNS": "200"})
    assert r.exit_code == 1 and "broken_shift" in r.output
    r = CliRunner().invoke(app, ["transforms", "rot90", "--check"])
    assert r.exit_code == 0


def test_a_group_check_beside_plain_checks_keeps_its_own_column():
    # Regression: the plain checks' errors were also written into the group check's column.
    def spec(checks):
        return spec_from_dict({"input": {"shape": [1, 8, 8]}, "samples": 256, "checks": checks})

    plain = [{"name": "hflip", "input": "hflip"}, {"name": "vflip", "input": "vflip"}]
    c4, hflip, vflip = audit(torch.nn.Identity(), spec([{"name": "c4", "group": "C4", "output": "same"}] + plain)).checks
    assert c4.mean == 0.0 and c4.max == 0.0  # the identity is exactly C4-equivariant
    alone = audit(torch.nn.Identity(), spec(plain)).checks
    assert [hflip.mean, vflip.mean] == [c.mean for c in alone] and hflip.mean > 1.0
