"""eqaudit.io.checkpoint: every supported format, every user mistake, and no code execution without trust."""

from __future__ import annotations

import itertools
import shutil
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from eqaudit.io.checkpoint import ExportedModule, load_model, model_device, model_dtype
from eqaudit.errors import EqauditError

SPEC = "spec.yaml"


# -- models used by the tests (module level, so pickles of them can be resolved) ----------------
class TinyNet(nn.Module):
    def __init__(self, hidden: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, hidden)
        self.fc2 = nn.Linear(hidden, 2)
        self.register_buffer("offset", torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x))) + self.offset


def _evil_rebuild(marker: str) -> TinyNet:
    """What unpickling an :class:`EvilNet` calls: it writes a marker file (the 'payload')."""
    Path(marker).write_text("code from the checkpoint ran")
    return TinyNet()


class EvilNet(TinyNet):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def __reduce__(self):  # unpickling runs _evil_rebuild(marker)
        return (_evil_rebuild, (self.marker,))


def make_tiny(hidden: int = 4) -> TinyNet:
    torch.manual_seed(0)
    return TinyNet(hidden)


def broken_factory() -> nn.Module:
    raise ValueError("boom: channels must be even")


def not_a_module_factory() -> str:
    return "a string"


NOT_CALLABLE = 42
X = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
FACTORY = f"{__name__}:make_tiny"


def same_outputs(a: nn.Module, b: nn.Module) -> bool:
    with torch.no_grad():
        return torch.allclose(a(X), b(X))


def load_err(*args, **kwargs) -> EqauditError:
    kwargs.setdefault("source", SPEC)
    with pytest.raises(EqauditError) as info:
        load_model(*args, **kwargs)
    err = info.value
    assert "\n" not in str(err)
    assert err.file == SPEC
    assert err.hint
    return err


@pytest.fixture
def trained() -> TinyNet:
    torch.manual_seed(123)
    m = TinyNet()
    with torch.no_grad():
        m.offset.fill_(0.5)
    return m


def _quiet_jit_save(model: nn.Module, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), str(path))


# -- state dicts --------------------------------------------------------------------------------
def test_safetensors_state_dict(tmp_path, trained):
    path = tmp_path / "w.safetensors"
    save_file(trained.state_dict(), str(path))
    model = load_model(path, factory=FACTORY)
    assert isinstance(model, TinyNet) and same_outputs(model, trained)


def test_pt_state_dict_and_callable_factory(tmp_path, trained):
    path = tmp_path / "w.pth"
    torch.save(trained.state_dict(), path)
    model = load_model(str(path), factory=TinyNet, kwargs={"hidden": 4})
    assert same_outputs(model, trained)


@pytest.mark.parametrize("wrapper", ["state_dict", "model_state_dict", "model"])
def test_training_checkpoint_dict_is_unwrapped(tmp_path, trained, wrapper):
    opt = torch.optim.Adam(trained.parameters())
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 7, wrapper: trained.state_dict(), "optimizer": opt.state_dict(), "lr": 1e-3}, path)
    assert same_outputs(load_model(path, factory=FACTORY), trained)


def test_format_is_detected_by_content_not_suffix(tmp_path, trained):
    st = tmp_path / "weights.bin"
    save_file(trained.state_dict(), str(st))
    pt = tmp_path / "weights.safetensors.ckpt"
    torch.save(trained.state_dict(), pt)
    ts = tmp_path / "scripted.pth"
    _quiet_jit_save(trained, ts)
    assert same_outputs(load_model(st, factory=FACTORY), trained)
    assert same_outputs(load_model(pt, factory=FACTORY), trained)
    assert same_outputs(load_model(ts), trained)


def test_legacy_non_zip_torch_save(tmp_path, trained):
    path = tmp_path / "old.pt"
    torch.save(trained.state_dict(), path, _use_new_zipfile_serialization=False)
    assert same_outputs(load_model(path, factory=FACTORY), trained)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod."])
def test_wrapper_prefix_is_stripped(tmp_path, trained, prefix):
    path = tmp_path / "dp.safetensors"
    save_file({prefix + k: v for k, v in trained.state_dict().items()}, str(path))
    assert same_outputs(load_model(path, factory=FACTORY), trained)


def test_factory_from_module_and_file_beside_the_spec(tmp_path, trained):
    (tmp_path / "ckpt_user_models_x1.py").write_text(
        "from torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, hidden=4):\n"
        "        super().__init__()\n"
        "        self.fc1 = nn.Linear(3, hidden)\n"
        "    def forward(self, x):\n"
        "        return self.fc1(x)\n"
    )
    torch.manual_seed(0)
    ref = nn.Linear(3, 6)
    path = tmp_path / "w.safetensors"
    save_file({"fc1.weight": ref.weight.detach(), "fc1.bias": ref.bias.detach()}, str(path))
    for factory in ("ckpt_user_models_x1:Net", "ckpt_user_models_x1.py:Net"):
        model = load_model("w.safetensors", factory=factory, kwargs={"hidden": 6}, base_dir=tmp_path)
        with torch.no_grad():
            assert torch.allclose(model(X), ref(X))


def test_no_checkpoint_builds_from_factory():
    model = load_model(None, factory=FACTORY, kwargs={"hidden": 3})
    assert isinstance(model, TinyNet) and model.fc1.out_features == 3


def test_module_instance_as_factory(tmp_path, trained):
    path = tmp_path / "w.safetensors"
    save_file(trained.state_dict(), str(path))
    target = TinyNet()
    assert load_model(path, factory=target) is target
    assert same_outputs(target, trained)


def test_map_location_moves_the_model(tmp_path, trained):
    path = tmp_path / "w.safetensors"
    save_file(trained.state_dict(), str(path))
    assert model_device(load_model(path, factory=FACTORY, map_location="meta")).type == "meta"


# -- TorchScript and torch.export ---------------------------------------------------------------
def test_torchscript_needs_no_factory(tmp_path, trained):
    path = tmp_path / "scripted.pt"
    _quiet_jit_save(trained, path)
    model = load_model(path)  # must not warn (filterwarnings=error)
    assert isinstance(model, torch.jit.ScriptModule) and same_outputs(model, trained)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(5)
    model = TinyNet().eval()
    folder = tmp_path_factory.mktemp("pt2")
    fixed = folder / "fixed.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(4, 3),)), str(fixed))
    dyn = folder / "dynamic.pt2"
    batch = torch.export.Dim("batch")
    ep = torch.export.export(model, (torch.randn(4, 3),), dynamic_shapes={"x": {0: batch}})
    torch.export.save(ep, str(dyn))
    return model, fixed, dyn


def test_exported_program_with_fixed_batch(exported):
    model, fixed, _ = exported
    loaded = load_model(fixed)
    assert isinstance(loaded, ExportedModule) and loaded.fixed_batch == 4
    loaded.eval()  # the raw exported module refuses eval(); the wrapper only flips the flag
    loaded.train()
    assert loaded.training
    with torch.no_grad():
        for n in (1, 4, 9):
            x = torch.randn(n, 3)
            assert torch.allclose(loaded(x), model(x), atol=1e-6)
    with pytest.raises(EqauditError) as info:
        loaded(torch.randn(4, 5))
    assert info.value.key == "model.checkpoint" and "dynamic_shapes" in info.value.hint


def test_exported_program_with_dynamic_batch(exported):
    model, _, dyn = exported
    loaded = load_model(dyn, factory="ignored.because:exported")
    assert loaded.fixed_batch is None
    x = torch.randn(7, 3)
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(x), model(x), atol=1e-6)
    assert model_dtype(loaded) == torch.float32


def test_exported_archive_with_pickled_payload_is_refused(exported, tmp_path):
    _, fixed, _ = exported
    marker = tmp_path / "marker.txt"
    evil = tmp_path / "evil.pt"
    torch.save(EvilNet(str(marker)), evil)
    out = tmp_path / "evil.pt2"
    with zipfile.ZipFile(fixed) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data/sample_inputs/model.pt"):
                data = evil.read_bytes()
            dst.writestr(info, data)
    err = load_err(out)
    assert err.key == "model.checkpoint"
    assert "sample_inputs" in err.message and "--trust-checkpoint" in err.hint
    assert not marker.exists()


# -- pickled whole modules: refused unless trusted ----------------------------------------------
def test_pickled_module_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "whole.pt"
    torch.save(EvilNet(str(marker)), path)
    err = load_err(path, factory=FACTORY)
    assert err.key == "model.checkpoint"
    assert "execute code" in err.message and "_evil_rebuild" in err.message
    assert "--trust-checkpoint" in err.hint and "state_dict" in err.hint
    assert not marker.exists()
    # trusted: the pickle runs (that is what trusting means) and the module comes back
    model = load_model(path, trust_checkpoint=True)
    assert marker.exists() and isinstance(model, TinyNet)


def test_trusted_whole_module_round_trip(tmp_path, trained):
    path = tmp_path / "whole.pth"
    torch.save(trained, path)
    model = load_model(path, trust_checkpoint=True)
    assert model is not trained and same_outputs(model, trained)


def test_trusted_pickle_finds_classes_beside_the_spec(tmp_path):
    name = "ckpt_user_pickled_x2"
    (tmp_path / f"{name}.py").write_text(
        "import torch\nclass Doubler(torch.nn.Module):\n    def forward(self, x):\n        return 2 * x\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        module = __import__(name)
        torch.save(module.Doubler(), tmp_path / "d.pt")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)
    model = load_model(tmp_path / "d.pt", trust_checkpoint=True, base_dir=tmp_path)
    assert torch.equal(model(X), 2 * X)
    sys.modules.pop(name, None)
    # the class's module is gone: a clear error, not a traceback
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(str(tmp_path / "d.pt"), elsewhere / "d.pt")
    (tmp_path / f"{name}.py").unlink()
    err = load_err(elsewhere / "d.pt", trust_checkpoint=True, base_dir=elsewhere)
    assert err.key == "model.checkpoint" and "importable" in err.hint and "ModuleNotFoundError" in err.message


# -- user mistakes ------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    err = load_err(tmp_path / "nope.safetensors", factory=FACTORY)
    assert err.key == "model.checkpoint" and "not found" in err.message and "nope.safetensors" in err.message


def test_directory_and_empty_file(tmp_path):
    assert "directory" in load_err(tmp_path, factory=FACTORY).message
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert "empty" in load_err(empty, factory=FACTORY).message


@pytest.mark.parametrize("name", ["random.pt", "random.safetensors", "random.pt2"])
def test_random_bytes(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(bytes(itertools.islice(itertools.cycle(range(7, 256, 13)), 4096)))
    err = load_err(path, factory=FACTORY)
    assert err.key == "model.checkpoint" and "corrupt" in err.hint


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "torchscript"])
def test_truncated_files(tmp_path, trained, fmt):
    path = tmp_path / f"full.{fmt}"
    if fmt == "safetensors":
        save_file(trained.state_dict(), str(path))
    elif fmt == "pt":
        torch.save(trained.state_dict(), path)
    else:
        _quiet_jit_save(trained, path)
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    err = load_err(cut, factory=FACTORY)
    assert err.key == "model.checkpoint" and "corrupt" in err.hint


def test_zip_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "data.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")
    assert "not a PyTorch checkpoint" in load_err(path, factory=FACTORY).message


@pytest.mark.parametrize("writer", ["safetensors", "pt"])
def test_state_dict_without_factory(tmp_path, trained, writer):
    path = tmp_path / f"w.{writer}"
    if writer == "pt":
        torch.save(trained.state_dict(), path)
    else:
        save_file(trained.state_dict(), str(path))
    err = load_err(path)
    assert err.key == "model.factory" and "set model.factory in the spec" in err.hint


def test_neither_factory_nor_checkpoint():
    err = load_err(None)
    assert err.key == "model"


@pytest.mark.parametrize(
    ("factory", "text"),
    [
        ("no_such_pkg_xyz.models:Net", "not found"),
        (f"{__name__}:NoSuchThing", "no attribute"),
        ("not a reference", "not a reference"),
        (f"{__name__}:NOT_CALLABLE", "not callable"),
        (f"{__name__}:broken_factory", "boom: channels must be even"),
        (f"{__name__}:not_a_module_factory", "not a torch.nn.Module"),
        ("missing_file.py:Net", "does not exist"),
    ],
)
def test_bad_factory(factory, text):
    err = load_err(None, factory=factory)
    assert err.key == "model.factory" and text in err.message


def test_bad_kwargs():
    err = load_err(None, factory=FACTORY, kwargs={"hiden": 3})
    assert err.key == "model.kwargs" and "hiden" in err.message and "hidden" in err.hint
    err = load_err(None, factory=FACTORY, kwargs=[1, 2])
    assert err.key == "model.kwargs"


def test_missing_and_unexpected_keys_are_listed(tmp_path, trained):
    state = trained.state_dict()
    state.pop("fc2.bias")
    for i in range(8):
        state[f"extra.layer{i}.weight"] = torch.zeros(1)
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    err = load_err(path, factory=FACTORY)
    assert err.key == "model.checkpoint"
    assert "missing keys (1): fc2.bias" in err.message
    assert "unexpected keys (8): extra.layer0.weight" in err.message and "(+3 more)" in err.message
    assert "extra.layer7.weight" not in err.message
    assert "model.kwargs" in err.hint


def test_integer_weights_for_a_float_model_are_refused(tmp_path):
    # load_state_dict casts them silently: an int32 export audited as all-zero weights and passed
    path = tmp_path / "w.safetensors"
    save_file({k: v.to(torch.int32) for k, v in TinyNet().state_dict().items()}, str(path))
    err = load_err(path, factory=FACTORY)
    assert "integer values for floating-point tensors (5)" in err.message  # 4 parameters, 1 buffer
    assert "fc1.weight expected float32 got int32" in err.message


def test_shape_mismatch_is_listed(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(TinyNet(hidden=8).state_dict(), path)
    err = load_err(path, factory=FACTORY, kwargs={"hidden": 4})
    assert "shape mismatches (3)" in err.message
    assert "fc1.weight expected [4, 3] got [8, 3]" in err.message


def test_non_tensor_values(tmp_path, trained):
    path = tmp_path / "w.pt"
    torch.save({**trained.state_dict(), "epoch": 3, "note": "best"}, path)
    err = load_err(path, factory=FACTORY)
    assert err.key == "model.checkpoint" and "epoch (int)" in err.message and "note (str)" in err.message


def test_payload_that_is_not_a_dict(tmp_path):
    path = tmp_path / "w.pt"
    torch.save([torch.zeros(2)], path)
    assert "list" in load_err(path, factory=FACTORY).message


def test_errors_without_spec_name_the_checkpoint(tmp_path):
    with pytest.raises(EqauditError) as info:
        load_model(tmp_path / "gone.pt", factory=FACTORY)
    assert info.value.file == str(tmp_path / "gone.pt")


# -- helpers ------------------------------------------------------------------------------------
def test_model_dtype_and_device():
    assert model_dtype(TinyNet().double()) == torch.float64
    assert model_device(TinyNet()) == torch.device("cpu")
    empty = nn.ReLU()
    assert model_dtype(empty) == torch.get_default_dtype()
    assert model_device(empty) == torch.device("cpu")
    ints = nn.Module()
    ints.register_buffer("idx", torch.arange(3))
    ints.half_param = nn.Parameter(torch.zeros(2, dtype=torch.float16))
    assert model_dtype(ints) == torch.float16
