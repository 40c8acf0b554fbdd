"""No code from a checkpoint runs without ``--trust-checkpoint`` (issue 12, section 1).

Every evil archive is built from a real ``torch.export.save`` output; its payload only writes a
marker file. Each test first proves the archive is really evil (plain torch, or eqaudit with the
trust flag, runs the payload), then that eqaudit without the flag refuses it and runs nothing.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from eqaudit.errors import EqauditError
from eqaudit.io.checkpoint import load_model
from eqaudit.io.exported import _weights_only_everywhere, safe_sym_expr

ROOT = Path(__file__).resolve().parent.parent


class Linear3(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _write_marker(marker: str) -> Linear3:
    """The payload: what unpickling a :class:`Payload` calls."""
    Path(marker).write_text("code from the checkpoint ran")
    return Linear3()


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (_write_marker, (self.marker,))


def _torch_payload(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save(Payload(marker), buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A real torch.export archive with a dynamic batch (so it has symbolic shapes)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("pt2") / "good.pt2"
    ep = torch.export.export(Linear3().eval(), (torch.randn(4, 3),),
                             dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(ep, str(path))
    return path


def _rewrite(src: Path, dst: Path, edit: Callable[[str, bytes], bytes | None],
             extra: list[tuple[str, bytes]] = ()) -> Path:
    """Copy the archive, passing each member through ``edit`` (None drops it), then add ``extra``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate member names are the point of some variants
        root = zin.namelist()[0].split("/", 1)[0]
        for info in zin.infolist():
            data = edit(info.filename.split("/", 1)[1], zin.read(info))
            if data is not None:
                zout.writestr(info, data)
        for name, data in extra:
            zout.writestr(name.replace("<archive>", root), data)
    return dst


def _config_with(data: bytes, fqn: str, **meta) -> bytes:
    config = json.loads(data)
    config["config"][fqn] = {**config["config"].get(fqn, {}), **meta}
    return json.dumps(config).encode()


_TENSOR_META = {"dtype": 7, "sizes": [{"as_int": 1}], "requires_grad": False,
                "device": {"type": "cpu", "index": None}, "strides": [{"as_int": 1}],
                "storage_offset": {"as_int": 0}, "layout": 7}


def _pickled_weight(path_name: str, use_pickle=True) -> Callable[[str, bytes], bytes]:
    def edit(name: str, data: bytes) -> bytes:
        if name == "data/weights/model_weights_config.json":
            return _config_with(data, "fc.bias", path_name=path_name, use_pickle=use_pickle)
        return data
    return edit


def _variants(good: Path, folder: Path, marker: Path) -> dict[str, Path]:
    evil = _torch_payload(marker)
    opaque = pickle.dumps(Payload(marker))
    opaque += b"\0" * (-len(opaque) % 4)  # a whole number of float32 elements
    build = {
        # the case: torch joins "data/weights/" with "/w" to "/w", read as "<archive>//w"
        "absolute path": (_pickled_weight("/w"), [("<archive>//w", evil)]),
        "relative path": (_pickled_weight("w_evil"), [("<archive>/data/weights/w_evil", evil)]),
        "dot slash": (_pickled_weight("./w_evil"), [("<archive>/data/weights/./w_evil", evil)]),
        "doubled slashes": (_pickled_weight("sub//w"), [("<archive>/data/weights/sub//w", evil)]),
        "parent folder": (_pickled_weight("../w"), [("<archive>/data/weights/../w", evil)]),
        "use_pickle as a string": (_pickled_weight("w_evil", "yes"), [("<archive>/data/weights/w_evil", evil)]),
        "config after blank lines": (
            lambda n, d: b" \n" * 100 + _pickled_weight("w_evil")(n, d)
            if n == "data/weights/model_weights_config.json" else d, [("<archive>/data/weights/w_evil", evil)]),
        "duplicate member, evil first": (
            lambda n, d: d, [("<archive>/data/weights/model_weights_config.json", b"")]),
        "legacy weights file": (lambda n, d: d, [("<archive>/data/weights/model.pt", evil)]),
        "sample inputs": (lambda n, d: evil if n == "data/sample_inputs/model.pt" else d, []),
        "pickled tensor constant": (
            lambda n, d: _config_with(d, "c", path_name="tensor_constant_evil", use_pickle=True, is_param=False,
                                       tensor_meta=None)
            if n == "data/constants/model_constants_config.json" else d,
            [("<archive>/data/constants/tensor_constant_evil", evil)]),
        "opaque constant": (
            lambda n, d: _config_with(d, "c", path_name="opaque_obj_0", use_pickle=True, is_param=False,
                                      tensor_meta=None)
            if n == "data/constants/model_constants_config.json" else d,
            [("<archive>/data/constants/opaque_obj_0", pickle.dumps(Payload(marker)))]),
        # use_pickle false: torch reads the bytes as a tensor first, then unpickles them anyway
        "opaque constant without use_pickle": (
            lambda n, d: _config_with(d, "c", path_name="opaque_obj_1", use_pickle=False, is_param=False,
                                      tensor_meta={**_TENSOR_META, "sizes": [{"as_int": len(opaque) // 4}]})
            if n == "data/constants/model_constants_config.json" else d,
            [("<archive>/data/constants/opaque_obj_1", opaque)]),
        "symbolic shape": (
            lambda n, d: d.replace(b"Symbol('s", ("Symbol(str(__import__('pathlib').Path(" + repr(str(marker))
                                                  + ").write_text('ran'))[:0]+'s").encode(), 1)
            if n == "models/model.json" else d, []),
    }
    out = {}
    for name, (edit, extra) in build.items():
        out[name] = _rewrite(good, folder / (name.replace(" ", "_").replace(",", "") + ".pt2"), edit, extra)
    # a duplicate config member: the first benign, the second asking for the pickle (and reversed)
    cfg = "data/weights/model_weights_config.json"
    with zipfile.ZipFile(good) as z:
        root = z.namelist()[0].split("/", 1)[0]
        benign = z.read(f"{root}/{cfg}")
    evil_cfg = _config_with(benign, "fc.bias", path_name="w_evil", use_pickle=True)
    for label, order in (("duplicate config, evil second", (benign, evil_cfg)),
                         ("duplicate config, evil first", (evil_cfg, benign))):
        out[label] = _rewrite(good, folder / (label.replace(" ", "_").replace(",", "") + ".pt2"),
                              lambda n, d: None if n == cfg else d,
                              [(f"<archive>/{cfg}", order[0]), (f"<archive>/{cfg}", order[1]),
                               ("<archive>/data/weights/w_evil", evil)])
    del out["duplicate member, evil first"]
    return out


VARIANTS = ["absolute path", "relative path", "dot slash", "doubled slashes", "parent folder",
            "use_pickle as a string", "config after blank lines", "legacy weights file", "sample inputs", "pickled tensor constant",
            "opaque constant", "opaque constant without use_pickle", "symbolic shape", "duplicate config, evil second", "duplicate config, evil first"]


@pytest.fixture(scope="module")
def evil_archives(exported, tmp_path_factory) -> tuple[dict[str, Path], Path]:
    folder = tmp_path_factory.mktemp("evil")
    marker = folder / "MARKER"
    return _variants(exported, folder, marker), marker


def _plain_torch_runs_payload(paths: dict[str, Path], marker: Path) -> set[str]:
    """The variants whose payload torch.export.load itself (no eqaudit) runs, in one subprocess."""
    code = ("import sys, logging, warnings, pathlib; warnings.simplefilter('ignore'); logging.disable(50)\n"
            "import torch, test_checkpoint_security\n"
            "marker = pathlib.Path(sys.argv[1])\n"
            "for name, path in zip(sys.argv[2::2], sys.argv[3::2]):\n"
            "    marker.unlink(missing_ok=True)\n"
            "    try:\n        torch.export.load(path)\n    except Exception:\n        pass\n"
            "    if marker.exists():\n        print('RAN', name)\n")
    args = [str(marker)] + [str(x) for name, path in paths.items() for x in (name, path)]
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT / "tests")})
    marker.unlink(missing_ok=True)
    return {line[4:] for line in done.stdout.splitlines() if line.startswith("RAN ")}


@pytest.mark.parametrize("variant", VARIANTS)
def test_evil_pt2_is_refused_and_runs_nothing(evil_archives, variant: str) -> None:
    archives, marker = evil_archives
    path = archives[variant]
    marker.unlink(missing_ok=True)
    with pytest.raises(EqauditError) as info:
        load_model(path, source="spec.yaml")
    assert not marker.exists(), f"{variant}: the payload ran without --trust-checkpoint"
    assert info.value.key == "model.checkpoint"
    assert "--trust-checkpoint" in (info.value.hint or "") or "cannot load" in info.value.message


def test_the_evil_archives_are_really_evil(evil_archives) -> None:
    """Plain torch.export.load runs the payload of the variants that torch reaches today (so the
    tests above prove something); the others are refused anyway (fail closed)."""
    archives, marker = evil_archives
    ran = _plain_torch_runs_payload(archives, marker)
    assert {"absolute path", "relative path", "sample inputs", "opaque constant", "symbolic shape",
            "opaque constant without use_pickle", "pickled tensor constant", "legacy weights file",
            "duplicate config, evil second", "config after blank lines"} <= ran, ran


def test_torch_load_is_forced_to_weights_only_during_an_untrusted_load(evil_archives) -> None:
    """The second layer alone: even without the pre-check, torch's own loader unpickles nothing
    but tensors while eqaudit loads an untrusted archive."""
    archives, marker = evil_archives
    for name in ("absolute path", "relative path", "sample inputs", "pickled tensor constant", "legacy weights file"):
        marker.unlink(missing_ok=True)
        with _weights_only_everywhere(untrusted=True), pytest.raises(Exception):
            torch.export.load(str(archives[name]))
        assert not marker.exists(), name
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


def test_trusted_evil_archive_runs_as_asked(evil_archives) -> None:
    """With the flag the user trusts the file: the load is torch's own (the payload runs)."""
    archives, marker = evil_archives
    marker.unlink(missing_ok=True)
    try:
        load_model(archives["relative path"], trust_checkpoint=True)
    except EqauditError:
        pass
    assert marker.exists()
    marker.unlink()


def test_a_clean_archive_still_loads(exported) -> None:
    model = load_model(exported)
    x = torch.randn(5, 3)
    with torch.no_grad():
        assert model(x).shape == (5, 2)


def test_graph_calling_python_is_refused(exported, tmp_path) -> None:
    """A node whose target resolves to a Python function (``torch.os.system``) is refused by torch's
    verifier at load: exit 2 before any forward."""
    path = _rewrite(exported, tmp_path / "target.pt2", lambda n, d: d.replace(
        b'"torch.ops.aten.linear.default"', b'"torch.os.system"') if n == "models/model.json" else d)
    with pytest.raises(EqauditError, match="cannot load the torch.export program"):
        load_model(path)


@pytest.mark.parametrize("text,ok", [
    ("Symbol('s77', positive=True, integer=True)", True),
    ("Add(Mul(Integer(2), Symbol('s0', integer=True)), Integer(-1))", True),
    ("FloorDiv(Symbol('s0'), Integer(2)) + 1", True),
    ("Float('1.5', precision=53)", True),
    ("int_oo", True),
    ("__import__('os').system('true')", False),
    ("Symbol('a').__class__", False),
    ("getattr(Symbol('a'), 'x')", False),
    ("Symbol('a b; import os')", False),
    ("[Symbol('a')][0]", False),
    ("(lambda: 0)()", False),
    ("sympify('1')", False),
    (17, False),
])
def test_safe_sym_expr(text, ok: bool) -> None:
    assert safe_sym_expr(text) is ok


# -- torch.save files and plain pickles ---------------------------------------------------------------
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_plain_pickle_is_a_pickle_not_corrupt(tmp_path, protocol: int) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(Payload(marker), protocol=protocol))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's protocol warning must not leak before the error
        with pytest.raises(EqauditError) as info:
            load_model(path, factory=f"{__name__}:Linear3", source="spec.yaml")
    assert "a pickle (may run code)" in info.value.message and "corrupt" not in info.value.message
    assert "--trust-checkpoint" in info.value.hint
    assert not marker.exists()
    assert isinstance(load_model(path, trust_checkpoint=True), Linear3) and marker.exists()


def test_plain_pickle_of_a_state_dict_is_refused_too(tmp_path) -> None:
    path = tmp_path / "weights.pkl"
    path.write_bytes(pickle.dumps(Linear3().state_dict(), protocol=4))
    with pytest.raises(EqauditError, match="may run code"):
        load_model(path, factory=f"{__name__}:Linear3")


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_checkpoint_that_is_not_a_regular_file(tmp_path, kind: str) -> None:
    path = tmp_path / "ckpt.pt"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
    with pytest.raises(EqauditError) as info:
        load_model(path, factory=f"{__name__}:Linear3", source="spec.yaml")
    assert info.value.key == "model.checkpoint" and "not a regular file" in info.value.message


def test_no_torch_load_without_weights_only() -> None:
    """Every torch.load in eqaudit passes weights_only=True, and pickle.load(s) is called only
    where the user trusted the file (``pickle_scan._trusted``), read with ``ast``."""
    import ast

    offenders = []
    for path in (ROOT / "eqaudit").rglob("*.py"):
        tree = ast.parse(path.read_text())
        functions = [f for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for call in ast.walk(tree):
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                    and isinstance(call.func.value, ast.Name)):
                continue
            name = f"{call.func.value.id}.{call.func.attr}"
            inside = {f.name for f in functions if f.lineno <= call.lineno <= f.end_lineno}
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                       for k in call.keywords)
            if name == "torch.load" and not safe and "_trusted" not in inside:
                offenders.append(f"{path.name}:{call.lineno}")
            if name in ("pickle.load", "pickle.loads") and "_trusted" not in inside:
                offenders.append(f"{path.name}:{call.lineno}")
    assert not offenders, offenders


def test_real_symbolic_shapes_are_accepted(tmp_path) -> None:
    """What torch writes for arithmetic on dynamic dimensions (FloorDiv, Mod, Add, Mul of several
    symbols) passes the check: the rule refuses code, not dynamic shapes."""
    from eqaudit.io.exported import unsafe_members

    class Arith(nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            z = torch.cat([x, x, y], 0)
            return z[1:].reshape(-1, 3).sum(0, keepdim=True).expand(x.shape[0] // 2 + 1, 3) * (y.shape[0] % 3 + 1)

    b, c = torch.export.Dim("b", min=2, max=1024), torch.export.Dim("c", min=2, max=64)
    ep = torch.export.export(Arith(), (torch.randn(4, 3), torch.randn(5, 3)), dynamic_shapes={"x": {0: b}, "y": {0: c}})
    path = tmp_path / "arith.pt2"
    torch.export.save(ep, str(path))
    assert unsafe_members(path) == []
    model = load_model(path)
    with torch.no_grad():
        assert model(torch.randn(6, 3), torch.randn(7, 3)).shape == (4, 3)


def test_srepr_of_sympy_expressions_is_safe() -> None:
    """Every expression srepr writes from symbols, integers, rationals and torch's shape functions
    is accepted (a generated family, not a hand-picked few)."""
    import itertools

    import sympy
    from torch.utils._sympy.functions import CeilDiv, FloorDiv, Max, Min, Mod

    s0, s1 = sympy.Symbol("s0", integer=True, positive=True), sympy.Symbol("s1", integer=True, positive=True)
    atoms = [s0, s1, sympy.Integer(3), sympy.Rational(1, 2), sympy.Integer(-7)]
    binary = [lambda a, b: a + b, lambda a, b: a * b, lambda a, b: a - b, lambda a, b: FloorDiv(a, b),
              lambda a, b: Mod(a, b), lambda a, b: Max(a, b), lambda a, b: Min(a, b), lambda a, b: CeilDiv(a, b),
              lambda a, b: sympy.Eq(a, b), lambda a, b: sympy.Lt(a, b)]
    checked = 0
    for (a, b), op in itertools.product(itertools.permutations([s0, s1, sympy.Integer(3)], 2), binary):
        try:
            expr = op(a, b)
        except (TypeError, ValueError):
            continue
        nested = [] if isinstance(expr, sympy.core.relational.Relational) else [
            op2(expr, c) for op2 in binary[:3] for c in atoms]
        for e in (expr, *nested):
            assert safe_sym_expr(sympy.srepr(e)), sympy.srepr(e)
            checked += 1
    assert checked > 100


@pytest.mark.parametrize("variant", ["absolute path", "symbolic shape", "opaque constant"])
def test_measure_of_an_evil_pt2_is_exit_2_and_runs_nothing(evil_archives, tmp_path, variant: str) -> None:
    """The issue's case end to end: ``eqaudit measure --spec spec.yaml`` with ``model: {checkpoint:
    evil.pt2}`` printed a normal report and ran the payload."""
    from typer.testing import CliRunner

    from eqaudit.cli import app

    archives, marker = evil_archives
    marker.unlink(missing_ok=True)
    (tmp_path / "spec.yaml").write_text(
        f"model: {{checkpoint: {archives[variant]}}}\ninput: {{shape: [3]}}\nsamples: 16\n"
        "checks: [{name: id, input: identity, threshold: 1}]\n")
    r = CliRunner().invoke(app, ["measure", "--spec", str(tmp_path / "spec.yaml")])
    assert r.exit_code == 2 and "--trust-checkpoint" in r.stderr, r.output
    assert len(r.stderr.strip().splitlines()) == 1
    assert not marker.exists()


# -- TorchScript: no Python, so no flag needed (documented in eqaudit.io.checkpoint) -------------------
class _SystemCall:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("member", ["data.pkl", "constants.pkl", "code"])
def test_torchscript_cannot_carry_python(tmp_path, member: str) -> None:
    """TorchScript's C++ loader knows torch types and TorchScript only: a pickled os.system in its
    pickles, or Python in its code, fails to load, and nothing runs."""
    marker = tmp_path / "MARKER"
    good = tmp_path / "good.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(Linear3()), str(good))

    def edit(name: str, data: bytes) -> bytes:
        if member == "code" and name.startswith("code/") and name.endswith(".py"):
            return data.replace(b"    fc = self.fc", f"    _ = __import__('os').system('touch {marker}')\n"
                                                    "    fc = self.fc".encode())
        if name == member:
            return pickle.dumps(_SystemCall(marker), protocol=2)
        return data

    evil = _rewrite(good, tmp_path / "evil.pt", edit)
    with pytest.raises(EqauditError, match="cannot load the TorchScript archive"):
        load_model(evil)
    assert not marker.exists()
