"""The layer-wise penalty (``regularizer.layers``, Implicitly Equivariant Networks): the hinge of
the per-layer audit's feature-map errors, from the penalty's own forward passes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from eqaudit.engine.distances import relative_l2
from eqaudit.errors import EqauditError
from eqaudit.finetune import TensorData, Trainer, config_from_dict, run_finetune

ROT90 = {"name": "rot90", "input": "rot90", "weight": 1.0, "epsilon": 0.0}
SHIFT = {"name": "shift", "input": {"shift": {"dx": [-2, 2], "dy": [-2, 2]}}, "weight": 0.5}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, 2, 3, stride=2, padding=1),
                         nn.Flatten(), nn.Linear(32, 2)).double()


def _config(tmp_path: Path, layers=None, checks=(ROT90,), points="data", **extra):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 1, 8, 8, generator=g)
    save_file({"inputs": x, "targets": (x.mean((1, 2, 3)) > 0.5).long()}, str(tmp_path / "d.safetensors"))
    regularizer = {"points": points, **({"layers": layers} if layers is not None else {})}
    return config_from_dict({
        "input": {"shape": [1, 8, 8], "bounds": [0, 1]}, "seed": 3, "samples": 64, "checks": list(checks),
        "data": "d.safetensors", "steps": 6, "batch_size": 8, "regularizer": regularizer,
        "optimizer": {"name": "adam", "lr": 0.05}, "output": {"checkpoint": "o.safetensors"}, **extra,
    }, tmp_path)


def test_the_layer_term_is_the_hinge_of_the_feature_map_error(tmp_path):
    layers = [{"name": "0", "weight": 0.7, "epsilon": 0.01}]
    with_layers, without = _config(tmp_path, layers), _config(tmp_path)
    model = _model()
    x = torch.rand(8, 1, 8, 8, dtype=torch.float64)
    plain = Trainer(without, model, TensorData(x, x), "cpu")
    y = model(x)
    base_penalty, _ = plain.penalty(x, y, 2)
    trainer = Trainer(with_layers, model, TensorData(x, x), "cpu")
    trainer.layers.start()
    y = model(x)
    penalty, errors = trainer.penalty(x, y, 2)
    feature = model[0]
    with torch.no_grad():
        turned = feature(torch.rot90(x, 1, (-2, -1)))
        layer_error = relative_l2(torch.rot90(feature(x), 1, (-2, -1)), turned).mean()
    assert float(errors["layer:0"]) == pytest.approx(float(layer_error), rel=1e-12)
    expected = base_penalty.detach() + 0.7 * torch.clamp_min(layer_error - 0.01, 0.0)
    assert float(penalty.detach()) == pytest.approx(float(expected), rel=1e-12) and float(layer_error) > 0.05
    penalty.backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("points", ["data", "random", "both"])
def test_no_extra_forward_and_strided_shifts(tmp_path, points):
    layers = [{"name": "0", "weight": 0.5}, {"name": "2", "weight": 0.5}]  # 8x8 and a stride-2 4x4 map
    counts = []
    for cfg in (_config(tmp_path, None, (ROT90, SHIFT), points), _config(tmp_path, layers, (ROT90, SHIFT), points)):
        model = _model()
        calls = []
        model.register_forward_pre_hook(lambda *_: calls.append(1))
        x = torch.rand(32, 1, 8, 8, dtype=torch.float64)
        trainer = Trainer(cfg, model, TensorData(x, (x.mean((1, 2, 3)) > 0.5).long()), "cpu")
        results = [trainer.step() for _ in range(3)]
        counts.append(len(calls))
    assert counts[0] == counts[1] > 0  # the hooks ride on the passes the penalty runs anyway
    errors = results[-1].errors
    assert {"layer:0", "layer:2"} <= set(errors) and all(v > 0 for v in errors.values())


def test_the_report_gives_each_layers_error_before_and_after(tmp_path):
    layers = [{"name": "0", "weight": 5.0}, {"name": "2", "weight": 5.0}]
    cfg = _config(tmp_path, layers, steps=40)
    result = run_finetune(cfg, model=_model(), handle_sigint=False)
    rows = {r["layer"]: r for r in result.report["layers"]}
    assert set(rows) == {"0", "2"} and all(r["check"] == "rot90" for r in rows.values())
    for row in rows.values():
        assert row["after"] < 0.5 * row["before"], row  # the layer penalty made the maps equivariant
    check = result.after.checks[0]
    assert [r["name"] for r in check.layers] == ["0", "2"] and check.layers[0]["mean"] == rows["0"]["after"]
    assert result.report["regularizer"]["layers"][0] == {"name": "0", "weight": 5.0, "epsilon": 0.0}
    on_disk = json.loads(cfg.output.report.read_text())
    assert on_disk["layers"] == result.report["layers"]


def test_layers_all_takes_every_feature_map(tmp_path):
    cfg = _config(tmp_path, [{"name": "all", "weight": 1.0}], steps=2)
    result = run_finetune(cfg, model=_model(), handle_sigint=False)
    assert [r["layer"] for r in result.report["layers"]] == ["0", "1", "2"]  # conv, tanh, conv: (N, C, H, W)
    assert {"layer:0", "layer:1", "layer:2"} <= set(result.curve[-1]["errors"])


def test_resume_with_layers_is_bitwise(tmp_path):
    layers = [{"name": "0", "weight": 0.5}]
    cfg = _config(tmp_path, layers, log_every=1)
    ref = run_finetune(cfg, model=_model(), handle_sigint=False)
    weights = _load(tmp_path)
    run_finetune(cfg, model=_model(), handle_sigint=False, steps=3, force=True)
    (tmp_path / "o.safetensors").unlink()
    resumed = run_finetune(cfg, model=_model(), handle_sigint=False, resume=True)
    assert resumed.resumed_from == 3 and resumed.curve == ref.curve
    assert all(torch.equal(weights[k], v) for k, v in _load(tmp_path).items())


def _load(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "o.safetensors"))


@pytest.mark.parametrize("layers, key, words", [
    ([{"name": "0", "wieght": 1}], r"regularizer\.layers\[0\]\.wieght", "did you mean 'weight'"),
    ([{"name": "0"}], r"regularizer\.layers\[0\]\.weight", "missing"),
    ([{"name": "0", "weight": -1}], r"regularizer\.layers\[0\]\.weight", "must be >= 0"),
    ("all", r"regularizer\.layers", "needs a weight"),
    ([{"name": "all", "weight": 1}, {"name": "0", "weight": 1}], r"regularizer\.layers", "stands alone"),
    ({"name": "0", "weight": 1, "epsilon": "x"}, r"regularizer\.layers\.epsilon", "finite number"),
])
def test_bad_layer_keys_are_located(tmp_path, layers, key, words):
    with pytest.raises(EqauditError, match=key) as info:
        _config(tmp_path, layers)
    assert words in str(info.value)


def test_an_unknown_layer_is_named_with_a_suggestion(tmp_path):
    cfg = _config(tmp_path, [{"name": "0", "weight": 1}, {"name": "features.2", "weight": 1}])
    with pytest.raises(EqauditError, match=r"regularizer\.layers\[1\]\.name: the model has no module 'features\.2'"):
        run_finetune(cfg, model=_model(), handle_sigint=False)


def test_layers_need_a_penalized_check_acting_on_feature_maps(tmp_path):
    rotate = {"name": "rotate", "input": {"rotate": {"degrees": [-30, 30]}}, "weight": 1.0}
    with pytest.raises(EqauditError, match=r"regularizer\.layers: no penalized check"):
        _config(tmp_path, [{"name": "0", "weight": 1}], (rotate,))


def test_the_digits_sample_penalizes_layers_of_its_cnn():
    from eqaudit.finetune import load_config
    from eqaudit.finetune.layer_penalty import LayerPenalty

    cfg = load_config(Path(__file__).resolve().parents[1] / "sample_configs" / "finetune_digits_ien.yaml")
    model = cfg.spec.build_model()
    penalty = LayerPenalty(cfg, model, cfg.regularizer.layers)
    assert penalty.tap.names == ["features.0", "features.2", "features.5"]
    assert cfg.output.checkpoint.name == "digits_finetuned.ien.safetensors"  # ignored by git, left out of wheels
    penalty.tap.remove()


def test_the_callers_model_keeps_no_hooks(tmp_path):
    model = _model()
    run_finetune(_config(tmp_path, [{"name": "0", "weight": 1.0}], steps=2), model=model, handle_sigint=False)
    assert not model[0]._forward_hooks


def test_the_cli_names_an_unknown_layer_at_its_line(tmp_path):
    from finetune_project import cli, make_project, write

    proj = make_project(tmp_path)
    cfg = write(proj, steps=2)
    cfg.write_text(cfg.read_text().replace("  points: data\n", "  points: data\n  layers:\n    - {name: fcc, weight: 1}\n"))
    r = cli(cfg)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    line = cfg.read_text().splitlines().index("    - {name: fcc, weight: 1}") + 1
    assert f"{cfg}:{line}: regularizer.layers[0].name: the model has no module 'fcc'" in r.stderr, r.stderr
    assert "did you mean 'fc'" in r.stderr and not (proj / "out" / "tuned.safetensors").exists()
