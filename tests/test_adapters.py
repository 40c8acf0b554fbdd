"""Adapters: e3nn irreps output actions and escnn-style field actions, through the real engine."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from typer.testing import CliRunner

import transforms_zoo as tz
from eqaudit.cli import app
from eqaudit.engine.run import audit
from eqaudit.errors import EqauditError
from eqaudit.spec import spec_from_dict
from transforms_zoo import SampleRNG, TransformError
from transforms_zoo.group import inverse_of

from conftest import write_spec

runner = CliRunner()


# -- e3nn ---------------------------------------------------------------------------------------
class E3Net(torch.nn.Module):
    """Point cloud (P, 3) -> irreps 1x0e + 1x1o + 1x2e: equivariant; `leak` adds a non-equivariant
    term to the l=1 part."""

    IRREPS_OUT = "1x0e + 1x1o + 1x2e"

    def __init__(self, leak: float = 0.0) -> None:
        super().__init__()
        from e3nn import o3

        torch.manual_seed(0)
        self.tp = o3.FullyConnectedTensorProduct("1x0e + 1x1o", "1x0e + 1x1o", self.IRREPS_OUT)
        self.leak = leak

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        feats = torch.cat([pos.norm(dim=-1, keepdim=True), pos], dim=-1)
        y = self.tp(feats, feats).mean(dim=-2)
        if self.leak:
            y = y + self.leak * torch.nn.functional.pad(pos[:, 0].abs(), (1, 5))  # |x| is not a vector
        return y


class E3FeatureNet(torch.nn.Module):
    """Irreps features (P, 4x0e + 2x1o) -> 1x1o + 1x2e, per point."""

    def __init__(self) -> None:
        super().__init__()
        from e3nn import o3

        torch.manual_seed(1)
        self.lin = o3.FullyConnectedTensorProduct("4x0e + 2x1o", "4x0e + 2x1o", "1x1o + 1x2e")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x, x)


def _e3nn():
    return pytest.importorskip("e3nn.o3")


def _points_spec(check: dict, samples: int = 256, dtype: str | None = None) -> dict:
    inp = {"shape": [5, 3], "bounds": [-1, 1]}
    if dtype:
        inp["dtype"] = dtype
    return {"input": inp, "samples": samples, "seed": 4, "checks": [check]}


def test_irreps_draws_the_same_rotation_as_rotate3d():
    _e3nn()
    rng = SampleRNG.for_range(7, 0, 32)
    for params in ({}, {"max_degrees": 30}, {"axis": [0, 0, 1], "degrees": [-20, 20]}):
        a = tz.build({"irreps": {"irreps": "1x1o", **params}}).sample(rng)
        b = tz.build({"rotate3d": params} if params else "rotate3d").sample(rng)
        assert torch.equal(a, b)
    # On points it IS rotate3d.
    t = tz.build({"irreps": {"irreps": "1x0e + 1x2e"}})
    x = torch.randn(32, 7, 3, dtype=torch.float64)
    p = t.sample(rng)
    assert torch.equal(t.apply(x, p), tz.build("rotate3d").apply(x, p))


def test_wigner_d_matrices_are_exact_and_match_e3nn():
    o3 = _e3nn()
    from transforms_zoo.adapters import wigner_d

    torch.manual_seed(0)
    r1, r2 = o3.rand_matrix(6, dtype=torch.float64), o3.rand_matrix(6, dtype=torch.float64)
    assert torch.allclose(wigner_d(1, r1), r1, atol=1e-14)  # e3nn's l=1 basis is (x, y, z)
    for l in range(5):
        d = wigner_d(l, r1)
        eye = torch.eye(2 * l + 1, dtype=torch.float64)
        assert torch.allclose(d @ d.transpose(-1, -2), eye, atol=1e-13)
        assert torch.allclose(wigner_d(l, r1 @ r2), d @ wigner_d(l, r2), atol=1e-13)  # a representation
        assert torch.allclose(d, o3.Irrep(l, (-1) ** l).D_from_matrix(r1), atol=1e-5)  # e3nn's own, to its precision


@pytest.mark.parametrize("dtype,bound", [("float64", 1e-8), ("float32", 1e-5)])
def test_e3nn_model_is_equivariant_through_the_engine(dtype, bound):
    _e3nn()
    model = E3Net().to(getattr(torch, dtype))
    spec = spec_from_dict(_points_spec({"name": "so3", "both": {"irreps": {"irreps": E3Net.IRREPS_OUT}},
                                        "threshold": bound}, dtype=dtype))
    report = audit(model, spec)
    c = report.checks[0]
    assert report.passed and c.mean < bound and c.n == 256
    assert c.input == c.output == "irreps(irreps=1x0e + 1x1o + 1x2e)"


def test_irreps_features_in_and_out():
    _e3nn()
    spec = spec_from_dict({
        "input": {"shape": [3, 10], "bounds": [-1, 1]}, "samples": 128,
        "checks": [{"name": "so3", "both": {"irreps": {"input": "4x0e + 2x1o", "irreps": "1x1o + 1x2e"}},
                    "threshold": 1e-5},
                   {"name": "scalars-only", "input": {"irreps": {"input": "4x0e + 2x1o", "irreps": "1x1o + 1x2e"}},
                    "threshold": 1e-5}],
    })
    report = audit(E3FeatureNet(), spec)
    so3, wrong = report.checks
    assert so3.passed and so3.mean < 1e-5
    assert not wrong.passed and wrong.mean > 1e-2  # rotating only the inputs: outputs are not invariant


def test_a_leak_is_measured_and_matches_an_independent_reference():
    o3 = _e3nn()
    leak = 0.3
    spec = spec_from_dict(_points_spec({"name": "so3", "both": {"irreps": {"irreps": E3Net.IRREPS_OUT}},
                                        "threshold": 1e-4}, samples=2048, dtype="float64"))
    report = audit(E3Net(leak).double(), spec)
    c = report.checks[0]
    assert not report.passed and c.mean > 1e-2
    # Reference: e3nn's own sampler and Wigner-D matrices, torch's generator, a plain loop-free formula.
    model = E3Net(leak).double().eval()
    g = torch.Generator().manual_seed(99)
    n = 8192
    pos = torch.rand(n, 5, 3, generator=g, dtype=torch.float64) * 2 - 1
    torch.manual_seed(5)
    rot = o3.rand_matrix(n, dtype=torch.float64)
    d_out = o3.Irreps(E3Net.IRREPS_OUT).D_from_matrix(rot)
    with torch.no_grad():
        err = (model(pos @ rot.transpose(-1, -2)) - torch.einsum("nij,nj->ni", d_out, model(pos))).norm(dim=-1)
    ref, ref_se = err.mean().item(), err.std().item() / n**0.5
    assert abs(c.mean - ref) < 4 * (c.stderr**2 + ref_se**2) ** 0.5


def test_input_rotate3d_with_a_separate_irreps_output_draws_independently():
    """Documented limitation: outside both: the output side draws its own rotation."""
    _e3nn()
    spec = spec_from_dict(_points_spec({"name": "split", "input": "rotate3d",
                                        "output": {"irreps": {"irreps": E3Net.IRREPS_OUT}},
                                        "threshold": 1e-4}, samples=128))
    assert not audit(E3Net(), spec).passed


def test_irreps_through_the_cli(project):
    _e3nn()
    (project / "e3models.py").write_text(textwrap.dedent(
        """
        import torch
        from e3nn import o3

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                torch.manual_seed(0)
                self.tp = o3.FullyConnectedTensorProduct("1x0e + 1x1o", "1x0e + 1x1o", "2x0e + 1x1o + 1x2e")

            def forward(self, pos):
                f = torch.cat([pos.norm(dim=-1, keepdim=True), pos], dim=-1)
                return self.tp(f, f).mean(dim=-2)
        """))
    spec = write_spec(project, """
    model: {factory: e3models.py:Net}
    input: {shape: [4, 3], bounds: [-1, 1]}
    samples: 128
    checks:
      - name: so3
        both: {irreps: {irreps: "2x0e + 1x1o + 1x2e"}}
        threshold: 1.0e-5
    """)
    r = runner.invoke(app, ["measure", "--spec", str(spec), "--json", "-"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["checks"][0]["mean"] < 1e-5


@pytest.mark.parametrize(
    "params,key,words",
    [
        ({"irreps": "1x0e + 1x1e", "input": "4x0e"}, "irreps", "same size 4 but act differently"),
        ({"irreps": "3x0e"}, "irreps", "same size 3"),
        ({"irreps": "1x1q"}, "irreps", "not an e3nn irreps string"),
        ({"irreps": 5}, "irreps", "expected an e3nn irreps string"),
        ({"irreps": "1x0e", "max_degrees": 400}, "max_degrees", "at most 180"),
        ({"irreps": "1x0e", "degrees": 10}, "degrees", "axis"),
        ({}, "irreps", "needs parameter 'irreps'"),
    ],
)
def test_bad_irreps_parameters_name_the_key(params, key, words):
    _e3nn()
    with pytest.raises(EqauditError) as info:
        spec_from_dict(_points_spec({"both": {"irreps": params}}))
    assert info.value.key == f"checks[0].both.irreps.{key}" and words in str(info.value)


def test_same_action_of_equal_size_is_accepted():
    _e3nn()
    t = tz.build({"irreps": {"irreps": "1x1e"}})  # xyz and 1x1e act identically on rotations
    x = torch.randn(4, 3, dtype=torch.float64)
    p = t.sample(SampleRNG.for_range(0, 0, 4))
    assert torch.allclose(t.apply(x, p), tz.build("rotate3d").apply(x, p))


def test_a_tensor_of_neither_size_is_an_error():
    _e3nn()
    spec = spec_from_dict({"input": {"shape": [5, 3]}, "samples": 64,
                           "checks": [{"both": {"irreps": {"irreps": "1x0e + 1x1o"}}}]})
    report = audit(lambda x: x.flatten(1)[:, :5], spec)  # the check's own error row, exit 2
    error = report.checks[0].error
    assert report.exit_code == 2 and error is not None
    assert "checks[0].both: " in error and "size 3 (input: xyz) or 4 (irreps: 1x0e + 1x1o)" in error


def test_missing_e3nn_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "e3nn", None)
    with pytest.raises(TransformError) as info:
        tz.build({"irreps": {"irreps": "1x0e + 1x1o"}})
    assert "needs e3nn" in str(info.value) and "eqaudit[e3nn]" in str(info.value)
    tz.build({"irreps": {"irreps": "xyz"}})  # no e3nn needed for the plain rotation


def test_listing_transforms_does_not_import_e3nn():
    code = "import sys, transforms_zoo as tz; tz.names(); tz.get('irreps'); print('e3nn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_irreps_inverse_and_fixed_rotation():
    _e3nn()
    t = tz.build({"irreps": {"irreps": "1x1o + 1x2e"}})
    x = torch.randn(8, 8, dtype=torch.float64)
    p = t.sample(SampleRNG.for_range(3, 0, 8))
    assert torch.allclose(inverse_of(t).apply(t.apply(x, p), p), x, atol=1e-13)
    fixed = tz.build({"irreps": {"irreps": "1x1o", "axis": [0, 0, 1], "degrees": 90}})
    assert not fixed.is_random and fixed.sample(SampleRNG.for_range(0, 0, 2)) is None
    y = fixed(torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64))
    assert torch.allclose(y, torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64), atol=1e-15)


# -- escnn-style fields -------------------------------------------------------------------------
def _rot_filters(w: torch.Tensor) -> torch.Tensor:
    """(m, c, k, k) -> (4m, c, k, k): filter j in its 4 rotations, field-major (escnn's order)."""
    return torch.stack([torch.rot90(w, h, (-2, -1)) for h in range(4)], dim=1).reshape(-1, *w.shape[1:])


class C4Lifting(torch.nn.Module):
    """Image (1, H, W) -> m C4-regular fields (4m channels): channel 4j + h = filter j rotated h times."""

    def __init__(self, m: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(m, 1, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(x, _rot_filters(self.w), padding=1)


class C4GroupConv(torch.nn.Module):
    """Regular -> regular C4 group convolution: out[j, h] = sum_{i, g} rot^h(W[j, i, g - h]) * x[i, g]."""

    def __init__(self, m_in: int = 2, m_out: int = 3, layout: str = "field") -> None:
        super().__init__()
        torch.manual_seed(1)
        self.w = torch.nn.Parameter(torch.randn(m_out, m_in, 4, 3, 3))
        self.layout = layout

    def weight(self) -> torch.Tensor:
        m_out, m_in = self.w.shape[:2]
        rows = []
        for h in range(4):
            shifted = torch.roll(self.w, h, dims=2)  # [..., g] = W[..., g - h]
            rows.append(torch.rot90(shifted, h, (-2, -1)))
        full = torch.stack(rows, dim=1)  # (m_out, 4 (h), m_in, 4 (g), 3, 3)
        if self.layout == "group":
            full = full.permute(1, 0, 3, 2, 4, 5)  # (h, j, g, i)
        return full.reshape(4 * m_out, 4 * m_in, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(x, self.weight(), padding=1)


def _image_spec(checks: list, channels: int = 1, size: int = 7) -> dict:
    return {"input": {"shape": [channels, size, size]}, "samples": 128, "checks": checks}


def test_c4_lifting_layer_is_exactly_equivariant_with_rot90_and_a_channel_roll():
    checks = [
        {"name": "k1", "input": "rot90", "output": "regular_c4", "threshold": 1e-5},
        {"name": "k3", "input": {"rot90": {"k": 3}}, "output": {"regular_c4": {"k": 3}}, "threshold": 1e-5},
        {"name": "k2", "input": {"rot90": {"k": 2}}, "output": {"regular_c4": {"k": 2}}, "threshold": 1e-5},
        {"name": "as-perm", "input": "rot90", "output": {"field": {"perm": [3, 0, 1, 2]}}, "threshold": 1e-5},
        {"name": "wrong-direction", "input": "rot90", "output": {"regular_c4": {"roll": -1}}, "threshold": 1e-5},
        {"name": "rot-only", "input": "rot90", "output": "rot90", "threshold": 1e-5},
    ]
    report = audit(C4Lifting(), spec_from_dict(_image_spec(checks)))
    by = {c.name: c for c in report.checks}
    for name in ("k1", "k3", "k2", "as-perm"):
        assert by[name].passed and by[name].mean < 1e-5, name
    for name in ("wrong-direction", "rot-only"):
        assert not by[name].passed and by[name].mean > 0.1, name


@pytest.mark.parametrize("layout", ["field", "group"])
def test_c4_group_convolution_with_random_turns_under_both(layout):
    checks = [{"name": "c4", "both": {"regular_c4": {"k": [0, 3], "layout": layout}}, "threshold": 1e-5},
              {"name": "other-layout", "both": {"regular_c4": {"k": [1, 3],
                                                               "layout": "group" if layout == "field" else "field"}},
               "threshold": 1e-5}]
    spec = _image_spec(checks, channels=8)
    spec["input"]["dtype"] = "float64"
    report = audit(C4GroupConv(layout=layout).double(), spec_from_dict(spec))
    good, other = report.checks
    assert good.passed and good.mean < 1e-10
    assert not other.passed


def test_regular_c4_random_turns_cover_all_four_and_invert():
    t = tz.build({"regular_c4": {"k": [0, 3]}})
    rng = SampleRNG.for_range(0, 0, 400)
    ks = t.sample(rng)
    assert set(ks.tolist()) == {0, 1, 2, 3}
    x = torch.randn(400, 8, 5, 5)
    assert torch.equal(inverse_of(t).apply(t.apply(x, ks), ks), x)
    fixed = tz.build({"regular_c4": {"k": 1}})
    assert torch.equal(inverse_of(fixed).apply(fixed.apply(x, None), None), x)


def test_vector_field_action_on_an_image_gradient():
    class Gradient(torch.nn.Module):
        """Central differences with wrap-around: (d/dW, d/dH), a vector field."""

        def forward(self, x):
            u = (torch.roll(x, -1, -1) - torch.roll(x, 1, -1)) / 2
            v = (torch.roll(x, -1, -2) - torch.roll(x, 1, -2)) / 2
            return torch.cat([u, v], dim=1)

    checks = [
        {"name": "quarter", "input": "rot90",
         "output": {"field": {"spatial": "rot90", "matrix": [[0, 1], [-1, 0]]}}, "threshold": 1e-6},
        {"name": "mirror", "input": "hflip",
         "output": {"field": {"spatial": "hflip", "matrix": [[-1, 0], [0, 1]]}}, "threshold": 1e-6},
        {"name": "scalars", "input": "rot90", "output": {"field": {"spatial": "rot90"}}, "threshold": 1e-6},
    ]
    report = audit(Gradient(), spec_from_dict(_image_spec(checks)))
    quarter, mirror, scalars = report.checks
    assert quarter.passed and mirror.passed and not scalars.passed
    t = tz.build({"field": {"spatial": "rot90", "matrix": [[0, 1], [-1, 0]]}})
    x = torch.randn(3, 4, 5, 5)
    assert torch.allclose(inverse_of(t).apply(t.apply(x, None), None), x, atol=1e-6)


@pytest.mark.parametrize(
    "t,key,words",
    [
        ({"field": {"perm": [0, 0, 1]}}, "field.perm", "permutation of 0..2"),
        ({"field": {"matrix": [[1, 0], [0]]}}, "field.matrix", "square"),
        ({"field": {"perm": [1, 0], "matrix": [[0, 1], [1, 0]]}}, "field.matrix", "either"),
        ({"field": {"spatial": "hflip", "k": 2}}, "field.k", "quarter turns"),
        ({"field": {"spatial": "shear"}}, "field.spatial", "one of"),
        ({"regular_c4": {"layout": "fields"}}, "regular_c4.layout", "one of"),
        ({"regular_c4": {"k": 1.5}}, "regular_c4.k", "integer"),
    ],
)
def test_bad_field_parameters_name_the_key(t, key, words):
    with pytest.raises(EqauditError) as info:
        spec_from_dict(_image_spec([{"input": "rot90", "output": t}]))
    assert info.value.key == f"checks[0].output.{key}" and words in str(info.value)


def test_channel_count_must_match_the_fields():
    spec = spec_from_dict(_image_spec([{"both": "regular_c4"}], channels=3))
    report = audit(torch.nn.Identity(), spec)  # the check's own error row, exit 2
    error = report.checks[0].error
    assert report.exit_code == 2 and error is not None
    assert "multiple of 4" in error and "checks[0].both: " in error


def test_transforms_cli_documents_the_adapters():
    for name in ("irreps", "regular_c4", "field"):
        r = runner.invoke(app, ["transforms", name], env={"COLUMNS": "200"})
        assert r.exit_code == 0 and name in r.stdout
