"""Per-channel attribution (``layers: {per_channel: true}``), the heatmap of it, and strided
per-layer rows that draw only identity shifts."""

import pytest
import torch
from torch import nn

from eqaudit.engine.run import audit
from eqaudit.errors import EqauditError
from eqaudit.spec import spec_from_dict

#: A 3x3 kernel invariant under flips and quarter turns (the dihedral group D4).
D4_KERNEL = [[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]
ASYMMETRIC_KERNEL = [[1.0, 0.0, -1.0], [2.0, 3.0, 0.0], [0.0, 1.0, 5.0]]


def _one_broken_channel(broken: int = 2, channels: int = 4) -> nn.Sequential:
    """A convolution whose channels use D4-symmetric kernels, except channel ``broken``."""
    conv = nn.Conv2d(1, channels, 3, padding=1, bias=False).double()
    with torch.no_grad():
        for c in range(channels):
            conv.weight[c, 0] = torch.tensor(D4_KERNEL, dtype=torch.float64) * (c + 1)
        conv.weight[broken, 0] = torch.tensor(ASYMMETRIC_KERNEL, dtype=torch.float64)
    return nn.Sequential(conv, nn.Tanh())


def _spec(layers, checks, shape=(1, 6, 6), **extra):
    return spec_from_dict({"input": {"shape": list(shape)}, "samples": 64, "layers": layers, "checks": checks}
                          | extra)


FLIP_AND_TURN = [{"name": "flip", "both": "hflip"}, {"name": "turn", "both": "rot90"}]


def test_only_the_asymmetric_channel_breaks_the_symmetry_at_every_layer():
    report = audit(_one_broken_channel(), _spec({"names": ["0", "1"], "per_channel": True}, FLIP_AND_TURN))
    for check in report.checks:
        for row in check.layers:
            ch = row["channels"]
            assert len(ch["error"]) == 4
            for c in (0, 1, 3):
                assert ch["error"][c] < 1e-12 and ch["normalized_variance"][c] < 1e-12, (check.name, row["name"], c)
                assert ch["sample_variance"][c] > 0
            assert ch["error"][2] > 1e-2 and ch["normalized_variance"][2] > 1e-2, (check.name, row["name"])
            assert ch["error_max"][2] >= ch["error"][2]


def test_normalized_variance_equals_the_hand_computed_one(tmp_path):
    torch.manual_seed(3)
    x = torch.rand(6, 1, 5, 5, dtype=torch.float64)
    torch.save(x, tmp_path / "x.pt")
    model = _one_broken_channel(broken=1, channels=2)
    spec = spec_from_dict({"input": {"data": str(tmp_path / "x.pt"), "sampling": "sequential"}, "samples": 6,
                           "layers": {"names": ["0"], "per_channel": True},
                           "checks": [{"name": "flip", "both": "hflip"}]})
    row = audit(model, spec).checks[0].layers[0]["channels"]
    with torch.no_grad():
        base, moved = model[0](x).flip(-1), model[0](x.flip(-1))  # transform(feature(x)), feature(transform(x))
    a = torch.stack([base, moved], dim=1)  # (sample, condition, channel, H, W)
    for c in range(2):
        ac = a[:, :, c].reshape(6, 2, -1)
        tv = ac.var(dim=1, unbiased=False).mean()  # over the two conditions, mean over samples and positions
        sv = ac.var(dim=0, unbiased=False).mean()  # over samples, mean over conditions and positions
        diff = torch.linalg.vector_norm((base - moved)[:, c].reshape(6, -1), dim=1)
        norms = (torch.linalg.vector_norm(base[:, c].reshape(6, -1), dim=1)
                 + torch.linalg.vector_norm(moved[:, c].reshape(6, -1), dim=1))
        assert row["transform_variance"][c] == pytest.approx(float(tv), rel=1e-9, abs=1e-20)
        assert row["sample_variance"][c] == pytest.approx(float(sv), rel=1e-9)
        assert row["normalized_variance"][c] == pytest.approx(float(tv / sv), rel=1e-9, abs=1e-20)
        assert row["error"][c] == pytest.approx(float((diff / norms).mean()), rel=1e-9, abs=1e-20)
    assert row["normalized_variance"][1] > 1e-3


def test_the_old_forms_of_layers_still_parse_and_leave_per_channel_off():
    for form in ("all", ["0", "1"]):
        spec = _spec(form, FLIP_AND_TURN)
        assert not spec.per_channel
        assert "channels" not in audit(_one_broken_channel(), spec.replace(samples=8)).checks[0].layers[0]
    spec = _spec({"per_channel": True}, FLIP_AND_TURN)
    assert spec.layers == "all" and spec.per_channel


@pytest.mark.parametrize("layers, key", [
    ({"names": "all", "per_channel": "yes"}, "layers.per_channel"),
    ({"names": "all", "per_chanel": True}, "layers.per_chanel"),
    ({"names": None}, "layers.names"),
    ({"names": [""]}, "layers.names[0]"),
])
def test_bad_per_channel_layers_are_refused_at_their_key(layers, key):
    with pytest.raises(EqauditError) as info:
        _spec(layers, FLIP_AND_TURN)
    assert key in str(info.value)


def test_an_unknown_module_in_the_mapping_form_is_located_at_layers_names():
    with pytest.raises(EqauditError) as info:
        audit(_one_broken_channel(), _spec({"names": ["0", "conv9"], "per_channel": True}, FLIP_AND_TURN))
    assert "layers.names[1]" in str(info.value) and "conv9" in str(info.value)


def test_a_strided_layer_that_only_identity_shifts_reach_is_skipped_not_zero():
    """dx, dy in [-1, 1] on a stride-2 map: only the (0, 0) draws are multiples of the stride; they
    move nothing, so they are no evidence (the old report printed an exact 0 over them)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 2, stride=2), nn.Tanh()).double()
    check = [{"name": "shift", "both": {"shift": {"dx": [-1, 1], "dy": [-1, 1]}}}]
    rows = audit(model, _spec(["0"], check, shape=(1, 8, 8))).checks[0].layers
    assert rows == [{"name": "0", "skipped": "only identity draws act here"}]


def test_a_strided_layer_counts_only_the_shifts_that_move():
    """dx in [-2, 2] on a stride-2 map: n counts the +-2 draws, never the (0, 0) ones."""
    model = nn.Sequential(nn.Conv2d(1, 2, 2, stride=2, padding_mode="circular")).double()
    check = [{"name": "shift", "both": {"shift": {"dx": [-2, 2]}}}]
    spec = _spec({"names": ["0"], "per_channel": True}, check, shape=(1, 8, 8), samples=200)
    row = audit(model, spec).checks[0].layers[0]
    # each of the 5 values is drawn ~40 times: only +-2 count (about 80; 78 here), 0 would add about
    # 40 more (the old count was 117)
    assert 55 <= row["n"] <= 100 and row["stride"] == [2, 2]
    assert row["mean"] < 1e-12 and max(row["channels"]["error"]) < 1e-12


NET_PY = '''
import torch
from torch import nn


def make():
    conv = nn.Conv2d(1, 3, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]]]).repeat(3, 1, 1, 1))
        conv.weight[1, 0, 0, 0] = 3.0
    return nn.Sequential(conv, nn.Tanh())
'''


def _project(tmp_path, layers):
    import yaml

    (tmp_path / "net.py").write_text(NET_PY, encoding="utf-8")
    spec = {"model": {"factory": "net.py:make"}, "input": {"shape": [1, 6, 6]}, "samples": 32, "layers": layers,
            "checks": [{"name": "flip", "both": "hflip", "threshold": 1.0}, {"name": "turn", "both": "rot90"}]}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    return tmp_path / "spec.yaml"


def _measure(*args):
    from typer.testing import CliRunner

    from eqaudit.cli import app

    return CliRunner().invoke(app, ["measure", *args, "--device", "cpu", "-q"])


def test_plot_layers_writes_a_png_of_the_expected_size(tmp_path):
    from PIL import Image

    from eqaudit.report.heatmap import DPI, MARGIN_IN, ROW_IN, WIDTH_IN

    spec = _project(tmp_path, {"names": ["0", "1"], "per_channel": True})
    png = tmp_path / "layers.png"
    result = _measure("--spec", str(spec), "--plot-layers", str(png), "--json", str(tmp_path / "r.json"))
    assert result.exit_code in (0, 1), result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as image:
        assert image.size == (int(WIDTH_IN * DPI), int((MARGIN_IN + 2 * ROW_IN) * DPI))  # two checks, two rows
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_plot_layers_is_refused_before_the_run(tmp_path, monkeypatch):
    import sys

    plain = _project(tmp_path, ["0"])
    result = _measure("--spec", str(plain), "--plot-layers", str(tmp_path / "l.png"))
    assert result.exit_code == 2 and "per_channel" in result.output and not (tmp_path / "l.png").exists()
    spec = _project(tmp_path, {"per_channel": True})
    result = _measure("--spec", str(spec), "--plot-layers", str(spec))
    assert result.exit_code == 2 and "--plot-layers" in result.output  # would replace the spec, an input
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # "import matplotlib" raises ImportError
    result = _measure("--spec", str(spec), "--plot-layers", str(tmp_path / "l.png"))
    assert result.exit_code == 2 and "matplotlib" in result.output and "plot" in result.output
    assert not (tmp_path / "l.png").exists()


def test_sequential_sampling_counts_each_sample_once_per_channel():
    """--precision EPS redoes the partial last block: its samples must not be folded twice."""
    model = _one_broken_channel()
    layers = {"names": ["0"], "per_channel": True}
    grown = audit(model, _spec(layers, FLIP_AND_TURN[:1], samples=100), precision=1e-12, max_samples=200)
    direct = audit(model, _spec(layers, FLIP_AND_TURN[:1], samples=grown.checks[0].n))
    assert grown.checks[0].n == 200
    got, want = grown.checks[0].layers[0], direct.checks[0].layers[0]
    assert got["n"] == want["n"] == 200
    for field in ("error", "transform_variance", "sample_variance", "normalized_variance"):
        assert got["channels"][field] == pytest.approx(want["channels"][field], rel=1e-12, abs=1e-30), field
