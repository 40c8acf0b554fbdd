"""Parity (``group: O3``) for 3-D models: ``irreps`` and ``rotate3d`` draw the rotation times the
inversion for half the samples, act on irreps as e3nn's ``D_from_matrix`` does, and catch outputs
whose parity is wrong, which proper rotations cannot see."""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

import transforms_zoo as tz
from eqaudit.engine.run import audit
from eqaudit.cli import app
from eqaudit.errors import EqauditError
from eqaudit.spec import spec_from_dict
from transforms_zoo import SampleRNG

from conftest import write_spec

runner = CliRunner()

MIXED = "2x0e + 1x0o + 1x1o + 2x1e + 1x2e + 1x2o + 1x3o"


def _e3nn():
    return pytest.importorskip("e3nn.o3")


def _spec(check: dict, samples: int = 512, shape: tuple[int, ...] = (5, 3), seed: int = 4) -> dict:
    inp = {"shape": list(shape), "bounds": [-1, 1], "dtype": "float64"}
    return {"input": inp, "samples": samples, "seed": seed, "checks": [check]}


def _matrices(t: tz.Transform, q: torch.Tensor, dim: int) -> torch.Tensor:
    """The matrices of ``t``'s action on a last dimension of size ``dim``, read off the basis."""
    eye = torch.eye(dim, dtype=torch.float64).expand(q.shape[0], dim, dim)
    return t.apply(eye, q).transpose(-1, -2)  # row j of the output is D e_j


# -- the draw -------------------------------------------------------------------------------------
def test_o3_draws_half_improper_elements_whose_rotations_are_the_so3_draws():
    n = 20000
    rng = SampleRNG.for_range(9, 0, n)
    so3 = tz.build("rotate3d").sample(rng)
    o3 = tz.build({"rotate3d": {"group": "O3"}}).sample(rng)
    det = torch.linalg.det(o3)
    assert torch.allclose(det.abs(), torch.ones(n, dtype=torch.float64), atol=1e-12)
    improper = det < 0
    # Binomial(n, 1/2): the fraction lies within 5 standard deviations of 1/2.
    assert abs(improper.double().mean().item() - 0.5) < 5 * math.sqrt(0.25 / n)
    # The proper part is exactly the SO3 draw: SO3 numbers are unchanged, O3 only adds the sign.
    assert torch.equal(torch.where(improper[:, None, None], -o3, o3), so3)
    # Per sample: the draws of samples 100..199 do not depend on the batch they are drawn in.
    part = tz.build({"rotate3d": {"group": "O3"}}).sample(SampleRNG.for_range(9, 100, 200))
    assert torch.equal(part, o3[100:200])


def test_o3_with_a_fixed_axis_and_angle_still_draws_the_inversion():
    t = tz.build({"rotate3d": {"axis": [0, 0, 1], "degrees": 90, "group": "O3"}})
    assert t.is_random
    q = t.sample(SampleRNG.for_range(0, 0, 256))
    r = tz.build({"rotate3d": {"axis": [0, 0, 1], "degrees": 90}})._fixed
    signs = {round(float(s)) for s in torch.linalg.det(q)}
    assert signs == {-1, 1}
    assert all(torch.allclose(m, r) or torch.allclose(m, -r) for m in q)


def test_irreps_and_rotate3d_draw_the_same_o3_elements():
    _e3nn()
    rng = SampleRNG.for_range(3, 0, 64)
    for extra in ({}, {"max_degrees": 40}, {"axis": [1, 2, 3], "degrees": [-30, 30]}):
        a = tz.build({"irreps": {"irreps": "1x1o", "group": "O3", **extra}}).sample(rng)
        b = tz.build({"rotate3d": {"group": "O3", **extra}}).sample(rng)
        assert torch.equal(a, b)


# -- the action against e3nn ----------------------------------------------------------------------
def test_the_action_on_irreps_is_e3nns_d_from_matrix_on_the_same_improper_matrices():
    o3 = _e3nn()
    n = 400
    t = tz.build({"irreps": {"irreps": MIXED, "group": "O3"}})
    q = t.sample(SampleRNG.for_range(5, 0, n))
    assert (torch.linalg.det(q) < 0).any() and (torch.linalg.det(q) > 0).any()
    ours = _matrices(t, q, o3.Irreps(MIXED).dim)
    theirs = o3.Irreps(MIXED).D_from_matrix(q)
    # e3nn goes through Euler angles and float32 constants (about 1e-7 per entry, more for l = 3).
    assert torch.allclose(ours, theirs, atol=5e-5)
    # Exactly a representation of O(3) (ours is float64-exact): D(Q1 Q2) = D(Q1) D(Q2) ...
    q2 = t.sample(SampleRNG.for_range(6, 0, n))
    assert torch.allclose(_matrices(t, q @ q2, ours.shape[-1]), ours @ _matrices(t, q2, ours.shape[-1]), atol=1e-12)
    # ... whose inverse (the transpose, drawn with the same parameters) undoes it ...
    x = torch.randn(n, 2, ours.shape[-1], dtype=torch.float64)
    assert torch.allclose(t.inverse().apply(t.apply(x, q), q), x, atol=1e-12)
    # ... and the inversion -I multiplies each irrep by its parity.
    minus_i = -torch.eye(3, dtype=torch.float64).expand(1, 3, 3)
    parity = torch.cat([torch.full((mul * ir.dim,), float(ir.p), dtype=torch.float64)
                        for mul, ir in o3.Irreps(MIXED)])
    assert torch.allclose(_matrices(t, minus_i, ours.shape[-1])[0], torch.diag(parity), atol=1e-12)
    # Points (input xyz) are 1o: the matrix itself.
    assert torch.equal(_matrices(t, q, 3), q)


def test_improper_matrices_given_explicitly_act_with_each_irreps_parity():
    """apply() follows the matrices it is given: before O3 an improper one acted as (-1)^l D(R),
    which is wrong for 0o, 1e, 2o, ... irreps."""
    o3 = _e3nn()
    torch.manual_seed(2)
    q = -o3.rand_matrix(50, dtype=torch.float64)
    t = tz.build({"irreps": {"irreps": MIXED}})  # the default SO3 draws; these params are given
    assert torch.allclose(_matrices(t, q, o3.Irreps(MIXED).dim), o3.Irreps(MIXED).D_from_matrix(q), atol=5e-5)


def test_o3_refuses_an_input_and_output_of_the_same_size_but_other_parity():
    _e3nn()
    tz.build({"irreps": {"irreps": "1x1e"}})  # SO3: xyz and 1x1e act alike, accepted (unchanged)
    with pytest.raises(EqauditError) as info:
        spec_from_dict(_spec({"both": {"irreps": {"irreps": "1x1e", "group": "O3"}}}))
    assert info.value.key == "checks[0].both.irreps.irreps" and "act differently on O(3)" in str(info.value)
    tz.build({"irreps": {"irreps": "1x1o", "group": "O3"}})  # the same action on O(3): accepted


# -- models: caught when the parity is wrong, ~0 when right ----------------------------------------
class PairNet(torch.nn.Module):
    """Points (P, 3) -> ``1x1o + 1x1e``: an e3nn tensor product of each point's features with its
    neighbour's (1o x 1o contains the pseudovector 1e, a cross product), averaged over points."""

    IRREPS = "1x1o + 1x1e"

    def __init__(self) -> None:
        super().__init__()
        from e3nn import o3

        torch.manual_seed(0)
        self.tp = o3.FullyConnectedTensorProduct("1x0e + 1x1o", "1x0e + 1x1o", self.IRREPS)

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        feats = torch.cat([pos.norm(dim=-1, keepdim=True), pos], dim=-1)
        return self.tp(feats, feats.roll(1, dims=-2)).mean(dim=-2)


def _o3_reference_mean(model: torch.nn.Module, n: int = 20000) -> tuple[float, float]:
    """Independent reference of the O3 error of a parity-swapped output: on an improper sample the
    error is ``2 |f(x)|``, on a proper one 0, so the mean is ``E |f(x)|`` over uniform inputs."""
    g = torch.Generator().manual_seed(123)
    pos = torch.rand(n, 5, 3, generator=g, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        norms = model(pos).norm(dim=-1)
    return norms.mean().item(), norms.std().item() / math.sqrt(n)


def test_an_e3nn_model_with_the_wrong_output_parity_passes_so3_and_fails_o3():
    _e3nn()
    model = PairNet().double()
    wrong, right = "1x1e + 1x1o", PairNet.IRREPS  # same l's, swapped parities
    checks = {
        "so3-wrong": {"irreps": wrong},
        "o3-wrong": {"irreps": wrong, "group": "O3"},
        "o3-right": {"irreps": right, "group": "O3"},
    }
    means = {}
    for name, params in checks.items():
        report = audit(model, spec_from_dict(_spec({"name": name, "both": {"irreps": params}, "threshold": 1e-6},
                                                  samples=2048)))
        means[name] = report.checks[0]
    assert means["so3-wrong"].passed and means["so3-wrong"].mean < 1e-9
    assert means["o3-right"].passed and means["o3-right"].mean < 1e-9
    bad = means["o3-wrong"]
    assert not bad.passed and bad.mean > 0.05
    ref, ref_se = _o3_reference_mean(model)
    assert abs(bad.mean - ref) < 4 * math.hypot(bad.stderr, ref_se)


def test_o3_numbers_do_not_depend_on_the_chunk_size():
    _e3nn()
    model = PairNet().double()
    spec = spec_from_dict(_spec({"name": "o3", "both": {"irreps": {"irreps": "1x1e + 1x1o", "group": "O3"}}},
                                samples=1024))
    a = audit(model, spec, batch_size=64).checks[0]
    b = audit(model, spec, batch_size=1024).checks[0]
    assert a.n == b.n == 1024
    assert a.mean == pytest.approx(b.mean, rel=1e-12, abs=0)
    assert a.stderr == pytest.approx(b.stderr, rel=1e-9, abs=0)


def _cross(x: torch.Tensor) -> torch.Tensor:
    """Two vectors (2, 3) -> their cross product, a pseudovector."""
    return torch.linalg.cross(x[:, 0], x[:, 1])


def _distances(x: torch.Tensor) -> torch.Tensor:
    """Points (P, 3) -> pairwise distances: invariant under all of O(3)."""
    return torch.cdist(x, x)


def test_rotate3d_o3_catches_a_cross_product_treated_as_a_vector():
    so3 = audit(_cross, spec_from_dict(_spec({"both": "rotate3d", "threshold": 1e-9}, shape=(2, 3))))
    assert so3.passed and so3.checks[0].mean < 1e-12
    check = {"both": {"rotate3d": {"group": "O3"}}, "threshold": 1e-9}
    c = audit(_cross, spec_from_dict(_spec(check, samples=4096, shape=(2, 3)))).checks[0]
    assert not c.passed
    # Truth: on an improper sample the error is |(-R)(a x b)... | = 2 |a x b|, else 0: mean E|a x b|.
    g = torch.Generator().manual_seed(7)
    x = torch.rand(40000, 2, 3, generator=g, dtype=torch.float64) * 2 - 1
    norms = _cross(x).norm(dim=-1)
    ref, ref_se = norms.mean().item(), norms.std().item() / math.sqrt(len(norms))
    assert abs(c.mean - ref) < 4 * math.hypot(c.stderr, ref_se)


def test_rotate3d_o3_finds_an_o3_invariant_model_invariant():
    report = audit(_distances, spec_from_dict(_spec({"input": {"rotate3d": {"group": "O3"}}, "threshold": 1e-9})))
    assert report.passed and report.checks[0].mean < 1e-12


# -- validation ------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["irreps", "rotate3d"])
@pytest.mark.parametrize("value,words", [
    ("SO4", "did you mean 'SO3'?"), ("o3x", "did you mean 'O3'?"), ("E3", "expected a group SO3 or O3"),
    (3, "expected a group SO3 or O3"), (None, "expected a group SO3 or O3"),
])
def test_a_bad_group_is_refused_at_its_key(where, value, words):
    if where == "irreps":
        _e3nn()
    params = {"group": value, **({"irreps": "1x1o"} if where == "irreps" else {})}
    with pytest.raises(EqauditError) as info:
        spec_from_dict(_spec({"both": {where: params}}))
    assert info.value.key == f"checks[0].both.{where}.group" and words in str(info.value)


@pytest.mark.parametrize("text", ["O3", "o3", "O(3)", "SO(3)", " so3 "])
def test_the_group_spellings_that_are_accepted(text):
    t = tz.build({"rotate3d": {"group": text}})
    assert t.group == text.strip().upper().replace("(", "").replace(")", "")


def test_a_lie_derivative_under_o3_is_refused_at_the_group():
    check = {"both": {"rotate3d": {"axis": [0, 0, 1], "degrees": 1, "group": "O3"}}, "mode": "lie"}
    with pytest.raises(EqauditError) as info:
        spec_from_dict(_spec(check))
    assert info.value.key == "checks[0].both.rotate3d.group" and "group: SO3" in str(info.value)


def test_the_group_parameter_is_documented_by_the_cli():
    for name in ("irreps", "rotate3d"):
        r = runner.invoke(app, ["transforms", name])
        assert r.exit_code == 0, r.output
        assert "group" in r.output and "O3" in r.output and "inversion" in r.output


def test_a_misspelled_group_through_the_cli_is_exit_2_at_its_key(tmp_path):
    (tmp_path / "cross.py").write_text(
        "import torch\n\n"
        "class Cross(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return torch.linalg.cross(x[:, 0], x[:, 1])\n"
    )
    spec = write_spec(tmp_path, """
    model: {factory: cross.py:Cross}
    input: {shape: [2, 3], bounds: [-1, 1]}
    samples: 64
    checks:
      - name: parity
        both: {rotate3d: {group: 0(3)}}
    """)
    r = runner.invoke(app, ["measure", "--spec", str(spec)])
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert "checks[0].both.rotate3d.group" in text and "expected a group SO3 or O3" in text
    spec.write_text(spec.read_text().replace("0(3)", "O3"))
    r = runner.invoke(app, ["measure", "--spec", str(spec)])
    assert r.exit_code == 1, r.output  # the cross product is a pseudovector: caught
