"""Real equivariant layers, measured through `eqaudit measure --json`, against references
computed independently (other random draws, the library's own rotation sampler)."""

import json
import math
import textwrap

import pytest
import torch
from typer.testing import CliRunner

from eqaudit.cli import app

from conftest import write_spec

runner = CliRunner()

E3NN_MODELS = textwrap.dedent(
    """
    import torch
    from e3nn import o3

    IRREPS_IN = o3.Irreps("1x0e + 1x1o")
    IRREPS_OUT = o3.Irreps("1x1o")

    class VectorNet(torch.nn.Module):
        '''Point cloud (P, 3) -> one vector (3,): rotation-equivariant, plus `leak` times a fixed
        non-equivariant linear map of the centroid (leak = 0: exactly equivariant).'''

        def __init__(self, leak=0.0):
            super().__init__()
            torch.manual_seed(0)
            self.tp = o3.FullyConnectedTensorProduct(IRREPS_IN, IRREPS_IN, IRREPS_OUT)
            self.leak = leak
            self.register_buffer("A", torch.tensor([[1.0, 0.5, 0.0], [0.0, 2.0, 0.0], [0.3, 0.0, -1.0]]))

        def forward(self, pos):
            feats = torch.cat([pos.norm(dim=-1, keepdim=True), pos], dim=-1)  # 0e + 1o per point
            y = self.tp(feats, feats).mean(dim=-2)                            # (B, 3)
            return y + self.leak * pos.mean(dim=-2) @ self.A.T
    """
)


def _spec(project, leak, samples):
    (project / "e3models.py").write_text(E3NN_MODELS)
    return write_spec(project, f"""
    model:
      factory: e3models.py:VectorNet
      kwargs: {{leak: {leak}}}
    input:
      shape: [5, 3]
      bounds: [-1, 1]
    samples: {samples}
    seed: 11
    checks:
      - name: so3
        both: rotate3d
        distance: l2
        threshold: 1.0e-4
    """)


def _measure(spec):
    r = runner.invoke(app, ["measure", "--spec", str(spec), "--json", "-"])
    assert r.exit_code in (0, 1), r.output
    return r.exit_code, json.loads(r.stdout)["checks"][0]


def test_e3nn_equivariant_model_passes(project):
    pytest.importorskip("e3nn")
    code, c = _measure(_spec(project, 0.0, 512))
    assert code == 0 and c["mean"] < 1e-5


def test_e3nn_model_with_a_leak_matches_an_independent_reference(project):
    pytest.importorskip("e3nn")
    from e3nn import o3

    code, c = _measure(_spec(project, 0.2, 4000))
    assert code == 1 and c["mean"] > 1e-3
    # Reference: e3nn's own Haar sampler, torch's generator, float64, a plain computation.
    import importlib.util

    spec = importlib.util.spec_from_file_location("e3models_ref", project / "e3models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.VectorNet(leak=0.2).double().eval()
    g = torch.Generator().manual_seed(123)
    n = 20000
    pos = torch.rand(n, 5, 3, generator=g, dtype=torch.float64) * 2 - 1
    torch.manual_seed(5)
    R = o3.rand_matrix(n, dtype=torch.float64)
    with torch.no_grad():
        rotated_out = torch.einsum("nij,nj->ni", R, model(pos))
        err = (model(pos @ R.transpose(-1, -2)) - rotated_out).norm(dim=-1)
    ref_mean = err.mean().item()
    ref_se = err.std().item() / math.sqrt(n)
    # The two estimates are independent: their difference is within ~4 joint standard errors.
    assert abs(c["mean"] - ref_mean) < 4 * math.hypot(c["stderr"], ref_se)


class C4Lift(torch.nn.Module):
    """A hand-made group convolution: one filter applied in its 4 rotations, then max over the
    rotations and global average pooling: invariant to rot90 exactly, to flips not."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(6, 1, 3, 3))

    def forward(self, x):
        outs = [torch.nn.functional.conv2d(x, torch.rot90(self.w, k, (-2, -1)), padding=1) for k in range(4)]
        # Rotating x rotates each map and permutes the 4 filter orientations: max over them and
        # the spatial mean are invariant.
        return torch.stack(outs).amax(0).mean(dim=(-1, -2))


def test_group_convolution_is_rot90_invariant_but_not_flip_invariant():
    from eqaudit.engine.run import audit
    from eqaudit.spec import spec_from_dict

    spec = spec_from_dict({"input": {"shape": [1, 9, 9]}, "samples": 256,
                           "checks": [{"name": "rot90", "input": "rot90", "threshold": 1e-5},
                                      {"name": "rot270", "input": {"rot90": {"k": 3}}, "threshold": 1e-5},
                                      {"name": "hflip", "input": "hflip", "threshold": 1e-5}]})
    report = audit(C4Lift(), spec)
    rot, rot3, flip = report.checks
    assert rot.passed and rot3.passed and rot.mean < 1e-6
    assert not flip.passed and flip.mean > 1e-3
