"""eqaudit sweep: a check's error as a function of one transform parameter."""

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from eqaudit.cli import app
from eqaudit.errors import EqauditError
from eqaudit.spec import spec_from_dict
from eqaudit.engine.sweep import parse_values, run_sweep

from conftest import write_spec

runner = CliRunner()


class C4Pool(torch.nn.Module):
    """A filter in its four quarter-turn orientations, max over them, global mean: invariant to
    rot90 exactly, not to other angles."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(4, 1, 3, 3))

    def forward(self, x):
        outs = [torch.nn.functional.conv2d(x, torch.rot90(self.w, k, (-2, -1)), padding=1) for k in range(4)]
        return torch.stack(outs).amax(0).mean(dim=(-1, -2))


def test_parse_values():
    assert parse_values("-180:180:90") == [-180, -90, 0, 90, 180]
    assert parse_values("0:1:0.25") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_values("1, 2.5,4") == [1, 2.5, 4]
    for bad in ["", "1:2", "0:10:-1", "0:1:0", "a,b", "0:1e9:1"]:
        with pytest.raises(EqauditError):
            parse_values(bad)


def test_c4_model_has_zero_error_exactly_at_quarter_turns():
    spec = spec_from_dict({"input": {"shape": [1, 9, 9]}, "samples": 128,
                           "checks": [{"name": "rot", "input": {"rotate": {"degrees": 0}}}]})
    result = run_sweep(C4Pool(), spec, "rot", "degrees", parse_values("-180:180:45"))
    by_value = {p.value: p.mean for p in result.points}
    for quarter in (-180, -90, 0, 90, 180):
        assert by_value[quarter] < 1e-5, (quarter, by_value[quarter])  # bilinear at exact quarter turns
    for other in (-135, -45, 45, 135):
        assert by_value[other] > 100 * max(by_value[q] for q in (-180, -90, 0, 90, 180))


def test_sweep_shares_points_across_values():
    class Reader(torch.nn.Module):
        def forward(self, x):
            return x[:, 0, 0, :1]

    spec = spec_from_dict({"input": {"shape": [1, 8, 8]}, "samples": 4000,
                           "checks": [{"name": "s", "input": {"shift": {"dx": 1}}, "distance": "l1"}]})
    result = run_sweep(Reader(), spec, "s", "dx", [0, 1, 2])
    assert result.points[0].mean == 0.0
    for p in result.points[1:]:  # two independent uniform pixels: E|U1 - U2| = 1/3
        assert p.ci_low - 0.01 <= 1 / 3 <= p.ci_high + 0.01


def _spec(project):
    return write_spec(project, """
    model:
      factory: models.py:PixelSum
    input: {shape: [1, 8, 8]}
    samples: 64
    checks:
      - name: rot
        input: {rotate: {degrees: 10}}
    """)


def test_cli_table_json_and_errors(project):
    spec = _spec(project)
    r = runner.invoke(app, ["sweep", "--spec", str(spec), "--check", "rot", "--param", "degrees",
                            "--values", "0,90", "--json", "-"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert [p["value"] for p in data["points"]] == [0, 90] and data["param"] == "degrees"
    r = runner.invoke(app, ["sweep", "--spec", str(spec), "--check", "rot", "--param", "degres", "--values", "1"])
    assert r.exit_code == 2 and "did you mean 'degrees'" in r.stderr
    r = runner.invoke(app, ["sweep", "--spec", str(spec), "--check", "rot", "--param", "padding", "--values", "1"])
    assert r.exit_code == 2 and "--values" in r.stderr


def test_plot_without_matplotlib_is_exit_2(project, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    r = runner.invoke(app, ["sweep", "--spec", str(_spec(project)), "--check", "rot", "--param", "degrees",
                            "--values", "0,90", "--plot", str(tmp_path / "s.png")])
    assert r.exit_code == 2 and "matplotlib" in r.stderr


def test_plot_writes_a_png(project, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "s.png"
    r = runner.invoke(app, ["sweep", "--spec", str(_spec(project)), "--check", "rot", "--param", "degrees",
                            "--values", "-90:90:45", "--plot", str(png), "-q"])
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class DiskSum(torch.nn.Module):
    """The pixel sum over a centred disk well inside the frame: invariant to every rotation, up to
    bilinear interpolation; exactly to quarter turns (the disk is symmetric under them)."""

    def forward(self, x):
        h, w = x.shape[-2:]
        yy, xx = torch.meshgrid(torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2, indexing="ij")
        disk = (yy**2 + xx**2 <= (min(h, w) / 2 - 2) ** 2).to(x.dtype)
        return (x * disk).sum(dim=(-1, -2))


def test_disk_sum_is_nearly_invariant_at_every_angle_and_exact_at_quarter_turns():
    spec = spec_from_dict({"input": {"shape": [1, 17, 17]}, "samples": 128,
                           "checks": [{"name": "rot", "input": {"rotate": {"degrees": 0}},
                                       "distance": "relative_l2"}]})
    result = run_sweep(DiskSum(), spec, "rot", "degrees", parse_values("-180:180:15"))
    by_value = {p.value: p.mean for p in result.points}
    assert len(by_value) == 25
    for v, m in by_value.items():
        if v % 90 == 0:
            assert m < 1e-6, (v, m)
        else:  # interpolation only: small against the C4 pooling model's error at the same angles
            assert m < 0.02, (v, m)
    c4 = run_sweep(C4Pool(), spec, "rot", "degrees", [45, 135])
    assert all(p.mean > 5 * max(by_value[45], by_value[135]) for p in c4.points)


def test_a_sweep_point_equals_the_audit_of_the_check_at_that_value():
    # the other random parameter (dy) is drawn from the swept check's stream: the same draws at
    # every value, and the same as auditing the check with dx fixed
    from eqaudit.engine.run import audit

    class Reader(torch.nn.Module):
        def forward(self, x):
            return x[:, 0, :3, :3].flatten(1)

    check = {"name": "s", "input": {"shift": {"dx": 0, "dy": [-2, 2]}}}
    spec = spec_from_dict({"input": {"shape": [1, 8, 8]}, "samples": 256, "checks": [check]})
    result = run_sweep(Reader(), spec, "s", "dx", [-1, 0, 2])
    for p in result.points:
        fixed = spec_from_dict({"input": {"shape": [1, 8, 8]}, "samples": 256,
                                "checks": [{**check, "input": {"shift": {"dx": p.value, "dy": [-2, 2]}}}]})
        assert p.mean == audit(Reader(), fixed).checks[0].mean


def test_an_output_written_like_the_input_follows_the_value():
    # input and output the same rotation, written out: equivariance of the identity model at every
    # angle (both sides get the swept value), not invariance
    spec = spec_from_dict({"input": {"shape": [1, 8, 8]}, "samples": 64,
                           "checks": [{"name": "r", "input": {"rotate": {"degrees": 10}},
                                       "output": {"rotate": {"degrees": 10}}}]})
    result = run_sweep(torch.nn.Identity(), spec, "r", "degrees", [0, 30, 90])
    assert all(p.mean < 1e-5 for p in result.points)


# -- refused values and output paths: exit 2 naming the flag, before the run ----------------------
def _sweep(spec, *args):
    return runner.invoke(app, ["sweep", "--spec", str(spec), "--check", "rot", "--param", "degrees", *map(str, args)])


@pytest.mark.parametrize("values", [",", " , ,", ",,,"])
def test_an_empty_value_list_is_refused(values):
    with pytest.raises(EqauditError, match="no values"):
        parse_values(values)


@pytest.mark.parametrize("values", ["0:1e300:1e-300", "1e308:-1e308:-1e307", "-1e308:1e308:1", "0:1:1e-300",
                                    "0:" + "9" * 400 + ":1"])
def test_huge_ranges_give_the_at_most_message(values):
    with pytest.raises(EqauditError) as info:
        parse_values(values)
    assert info.value.argument == "values" and f"at most {2000}" in str(info.value)  # the CLI maps it to --values


def test_run_sweep_refuses_no_values():
    spec = spec_from_dict({"input": {"shape": [1, 8, 8]}, "samples": 8,
                           "checks": [{"name": "rot", "input": {"rotate": {"degrees": 0}}}]})
    with pytest.raises(EqauditError, match="no values"):
        run_sweep(C4Pool(), spec, "rot", "degrees", [])


@pytest.mark.parametrize("extra", [["--json", "-"], []])
def test_cli_empty_values_is_exit_2(project, extra):
    r = _sweep(_spec(project), "--values", ",", *extra)
    assert r.exit_code == 2, r.output
    assert "--values" in r.stderr and "no values" in r.stderr and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "--debug" not in r.stderr


def test_cli_huge_range_is_exit_2(project):
    for values in ("0:1e300:1e-300", "1e308:-1e308:-1e307"):
        r = _sweep(_spec(project), "--values", values)
        assert r.exit_code == 2 and "--values" in r.stderr and "at most 2000" in r.stderr, r.output


@pytest.mark.parametrize("flag", ["--json", "--plot"])
def test_cli_output_to_a_directory_is_exit_2_before_the_run(project, tmp_path, monkeypatch, flag):
    import eqaudit.engine.sweep

    def no_run(*a, **k):
        raise AssertionError("the sweep ran before the output path was checked")

    monkeypatch.setattr(eqaudit.engine.sweep, "run_sweep", no_run)
    r = _sweep(_spec(project), "--values", "0,90", flag, tmp_path)
    assert r.exit_code == 2, r.output
    assert f"{flag}: '{tmp_path}' is a directory" in r.stderr and "--debug" not in r.stderr
    r = _sweep(_spec(project), "--values", "0,90", flag, _spec(project) / "out")  # a path through a file
    assert r.exit_code == 2 and f"{flag}: cannot write" in r.stderr and "is a file, not a folder" in r.stderr


def test_cli_json_and_plot_into_new_folders_are_written(project, tmp_path):
    pytest.importorskip("matplotlib")
    j, png = tmp_path / "a" / "b" / "s.json", tmp_path / "a" / "s.png"
    r = _sweep(_spec(project), "--values", "0,90", "--json", j, "--plot", png, "-q")
    assert r.exit_code == 0, r.output
    assert [p["value"] for p in json.loads(j.read_text())["points"]] == [0, 90]
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in tmp_path.rglob("*.tmp")]  # no temporary files left behind


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_plot_to_a_stream_link_writes_into_it_instead_of_replacing_it(project, tmp_path):
    # /dev/stdout and /proc/self/fd/N lead to the stream (here a file): an atomic rename would
    # replace the link itself, as root even /dev/stdout or /dev/null
    pytest.importorskip("matplotlib")
    with open(tmp_path / "stream.png", "wb") as fh:
        r = _sweep(_spec(project), "--values", "0,90", "--plot", f"/proc/self/fd/{fh.fileno()}", "-q")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "stream.png").read_bytes()[:4] == b"\x89PNG"
