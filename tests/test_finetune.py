"""eqaudit finetune: config errors, the penalty, forward counts, resume, atomic outputs, reports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import transforms_zoo.hash32 as zoo_hash32
from eqaudit.cli import app
from eqaudit.errors import EqauditError
from eqaudit.finetune import (
    Trainer,
    atomic_write,
    config_from_dict,
    load_config,
    load_data,
    run_finetune,
)
from finetune_project import CONFIG, cli, make_project, runner, weights, write


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    return make_project(tmp_path)


# -- config errors ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "old, new, where, words",
    [
        ("optimizer:", "optimiser:", "optimiser", "did you mean 'optimizer'"),
        ("  points: data", "  point: data", "regularizer.point", "did you mean 'points'"),
        ("  points: data", "  points: everywhere", "regularizer.points", "expected data, random or both"),
        ("{name: adam, lr: 0.05}", "{name: adma, lr: 0.05}", "optimizer.name", "did you mean 'adam'"),
        ("{name: adam, lr: 0.05}", "{name: adam, momentum: 0.9}", "optimizer.momentum", "applies to sgd"),
        ("steps: 30", "steps: 30\nepochs: 2", "epochs", "not both"),
        ("batch_size: 16", "batch_size: -1", "batch_size", "must be >= 1"),
        ("  inputs: x", "  inputs: xx", "data.inputs", "no tensor 'xx'"),
        ("  path: data.safetensors", "  path: nodata.safetensors", "data.path", "not found"),
        ("  checkpoint: out/tuned.safetensors", "  checkpoint: out/tuned.pt", "output.checkpoint", "safetensors"),
        ("  checkpoint: out/tuned.safetensors", "  checkpoint: tiny.safetensors", "output.checkpoint",
         "being fine-tuned"),
        ("log_every: 5", "log_every: 5\ndynamics: {direction: 3}", "dynamics.direction", "did you mean 'directions'"),
        ("log_every: 5", "log_every: 5\nthreads: 20000", "threads", "20000 is too large (at most 1024)"),
        ("log_every: 5", "log_every: 5\nthreads: 0", "threads", "must be >= 1"),
    ],
)
def test_config_errors_exit_2_with_file_key_line(proj, old, new, where, words):
    text = CONFIG.format(steps=30, points="data", every=10, threshold=1)
    assert old in text
    text = text.replace(old, new, 1)
    path = proj / "bad.yaml"
    path.write_text(text)
    last = new.splitlines()[-1]
    line = max(i for i, ln in enumerate(text.splitlines(), 1) if last in ln)
    r = cli(path)
    assert r.exit_code == 2, r.output
    msg = r.stderr.strip()
    assert len(msg.splitlines()) == 1 and "Traceback" not in r.output, msg
    assert f"{path}:{line}: {where}:" in msg, msg
    assert words in msg, msg


@pytest.mark.parametrize("threads", [20000, 1000000])
def test_threads_are_bounded_at_the_key(proj, threads):
    # threads: 1000000 segfaulted (exit 139) and 20000 exited 1, the gate's code
    d = {"model": {"factory": "models.py:Tiny"}, "input": {"shape": [1, 4, 4]},
         "checks": [{"name": "hflip", "input": "hflip"}], "data": {"path": "data.safetensors", "inputs": "x",
         "targets": "y"}, "steps": 1, "output": {"checkpoint": "o.safetensors"}, "threads": threads}
    with pytest.raises(EqauditError, match=rf"threads: {threads} is too large \(at most 1024\)"):
        config_from_dict(d, proj)
    assert config_from_dict(dict(d, threads=1024), proj).threads == 1024


def test_missing_sections_are_named(proj):
    text = CONFIG.format(steps=30, points="data", every=10, threshold=1)
    for key, block in [("output", "output:\n  checkpoint: out/tuned.safetensors\n"), ("steps", "steps: 30\n")]:
        path = proj / f"no_{key}.yaml"
        path.write_text(text.replace(block, ""))
        r = cli(path)
        assert r.exit_code == 2 and f"{key}: missing" in r.stderr, r.stderr


def test_bad_options(proj):
    cfg = write(proj)
    r = cli(cfg, "--resume", "--force")
    assert r.exit_code == 2 and "--force" in r.stderr
    r = cli(cfg, "--resume")
    assert r.exit_code == 2 and "no resumable state" in r.stderr and "tuned.state.pt" in r.stderr
    r = cli(cfg, "--steps", "0")
    assert r.exit_code == 2 and "--steps" in r.stderr


# -- the penalty --------------------------------------------------------------------------------
def test_finetune_reduces_the_penalty(proj):
    cfg = load_config(write(proj, steps=40))
    res = run_finetune(cfg, handle_sigint=False)
    pen_before = sum(c.penalty for c in res.before.checks)
    pen_after = sum(c.penalty for c in res.after.checks)
    assert pen_after < 0.5 * pen_before, (pen_before, pen_after)  # rot90 conflicts with the task
    assert res.after.check("hflip").mean < 0.3 * res.before.check("hflip").mean
    curve = res.curve
    assert [p["step"] for p in curve] == list(range(5, 41, 5))
    assert curve[-1]["penalty"] < curve[0]["penalty"]
    assert set(curve[0]["errors"]) == {"hflip", "rot90"}
    # the hflip-invariant task survives
    assert res.metrics_after["accuracy"] >= res.metrics_before["accuracy"] - 0.05
    assert res.paths.checkpoint.is_file() and res.paths.report.is_file() and res.paths.state.is_file()


class Counting(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(16, 2)
        self.calls = 0
        self.rows: list[int] = []

    def forward(self, x):
        self.calls += 1
        self.rows.append(x.shape[0])
        return self.fc(x.flatten(1))


def _trainer(proj, extra: dict, checks=None):
    d = {
        "model": {"factory": "models.py:Tiny"},
        "input": {"shape": [1, 4, 4]},
        "checks": checks or [{"name": "hflip", "input": "hflip"}, {"name": "rot90", "input": "rot90"},
                             {"name": "audit-only", "input": "vflip", "weight": 0}],
        "data": {"path": "data.safetensors", "inputs": "x", "targets": "y"},
        "steps": 4,
        "batch_size": 16,
        "output": {"checkpoint": "o.safetensors"},
        **extra,
    }
    cfg = config_from_dict(d, proj)
    train, _ = load_data(cfg)
    model = Counting()
    return Trainer(cfg, model, train, "cpu"), model


@pytest.mark.parametrize(
    "reg, per_step",
    [
        ({"points": "data"}, [3, 3]),  # one forward of the batch (reused) + one per penalized check
        ({"points": "data", "every": 2}, [3, 1]),  # plain step in between: the batch only
        ({"points": "data", "num_funcs": 1}, [2, 2]),
        ({"points": "random", "samples": 8}, [4, 4]),  # batch + random points + one per check
        ({"points": "both", "samples": 8}, [4, 4]),
    ],
)
def test_forward_count_per_step(proj, reg, per_step):
    tr, model = _trainer(proj, {"regularizer": reg})
    counts = []
    for _ in per_step:
        model.calls = 0
        tr.step()
        counts.append(model.calls)
    assert counts == per_step
    if reg["points"] == "both":
        assert model.rows[-2:] == [16 + 8, 16 + 8]  # the transformed batch: data rows + random rows


def test_penalty_draws_are_a_function_of_seed_and_step(proj):
    tr, model = _trainer(proj, {"regularizer": {"points": "data", "num_funcs": 1}},
                         checks=[{"name": "rot", "input": {"rotate": {"degrees": [-30, 30]}}},
                                 {"name": "hflip", "input": "hflip"}, {"name": "rot90", "input": "rot90"}])
    x = torch.rand(16, 1, 4, 4)
    y = model(x)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        a = tr.penalty(x, y, 7)
    tr.step()
    tr.step()
    model.load_state_dict(saved)
    with torch.no_grad():
        b = tr.penalty(x, y, 7)
    assert torch.equal(a[0], b[0]) and a[1].keys() == b[1].keys()
    picks = {tuple(tr.chosen_checks(s)) for s in range(30)}
    assert all(len(p) == 1 for p in picks) and len(picks) == 3


def test_a_step_reads_back_once_and_logs_what_it_computed(proj, host_reads, monkeypatch):
    monkeypatch.setattr(zoo_hash32, "_np", None)  # the draws as on CUDA
    tr, model = _trainer(proj, {"regularizer": {"points": "data"}, "optimizer": {"name": "sgd", "lr": 0.1}})
    x, y = tr.train.batch(tr.batch_indices(0))
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        out = model(x)
        task = tr.loss_fn(out, y)
        pen, errs = tr.penalty(x, out, 0)
    with host_reads:
        got = tr.step()
    assert host_reads.reads == {"tolist": 1}  # loss, task loss, penalty and errors in one read
    assert got.task_loss == pytest.approx(float(task), rel=1e-6)
    assert got.penalty == pytest.approx(float(pen), rel=1e-6)
    assert got.errors == pytest.approx({k: float(v) for k, v in errs.items()}, rel=1e-6)
    assert not all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_a_non_finite_loss_stops_before_the_weights_change(proj):
    tr, model = _trainer(proj, {"regularizer": {"points": "data"}})
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.fc.bias.fill_(float("nan"))
    saved["fc.bias"] = model.fc.bias.detach().clone()
    with pytest.raises(EqauditError, match=r"optimizer\.lr.*the loss became nan at step 1"):
        tr.step()
    after = model.state_dict()
    assert torch.equal(after["fc.weight"], saved["fc.weight"])
    assert after["fc.bias"].isnan().all()


# -- CLI run, report, gate, --force -------------------------------------------------------------
def test_cli_report_gate_and_dynamics(proj):
    cfg = write(proj, steps=20, threshold="0.000001")
    r = cli(cfg, "--dynamics", "--json", "-")
    assert r.exit_code == 1, r.output  # the final audit fails its (impossible) thresholds
    rep = json.loads(r.stdout)
    assert rep["command"] == "finetune" and rep["steps"] == 20 and rep["passed"] is False
    for side in ("before", "after"):
        audit = rep[side]["audit"]
        assert [c["name"] for c in audit["checks"]] == ["hflip", "rot90"] and audit["seed"] == 3
        assert rep[side]["metrics"]["split"] == "validation" and 0 <= rep[side]["metrics"]["accuracy"] <= 1
    assert rep["after"]["audit"]["checks"][0]["mean"] < rep["before"]["audit"]["checks"][0]["mean"]
    assert len(rep["curve"]) == 4 and {"task_loss", "penalty", "errors", "step"} <= set(rep["curve"][0])
    dyn = rep["dynamics"]
    assert dyn["sharpness"]["phi"] > 0 and dyn["sharpness"]["displacements"] == [0.05, 0.1]
    assert dyn["sharpness"]["directions"] == 10 and dyn["hessian"]["eigenvalue"] > 0
    on_disk = json.loads((proj / "out" / "tuned.report.json").read_text())
    assert on_disk["after"] == rep["after"]
    tuned = weights(proj / "out" / "tuned.safetensors")
    assert set(tuned) == {"fc.weight", "fc.bias"}
    # the written model audits to the same numbers with `eqaudit measure`
    spec = proj / "spec.yaml"  # the config's spec part
    spec.write_text(cfg.read_text().split("data:")[0])
    m = runner.invoke(app, ["measure", str(proj / "out" / "tuned.safetensors"), "--spec", str(spec), "--json", "-"])
    assert json.loads(m.stdout)["checks"] == rep["after"]["audit"]["checks"]


def test_refuses_to_overwrite_without_force(proj):
    cfg = write(proj, steps=5)
    r = cli(cfg, "--quiet")
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    before = (proj / "out" / "tuned.safetensors").read_bytes()
    r = cli(cfg)
    assert r.exit_code == 2 and "--force" in r.stderr and "refusing to overwrite" in r.stderr
    assert (proj / "out" / "tuned.safetensors").read_bytes() == before
    r = cli(cfg, "--force")
    assert r.exit_code == 0 and "after fine-tuning" in r.stdout and "validation accuracy" in r.stdout
    # a state left by an unfinished run is not silently overwritten either
    for f in ("tuned.safetensors", "tuned.report.json"):
        (proj / "out" / f).unlink()
    r = cli(cfg)
    assert r.exit_code == 2 and "--resume" in r.stderr and "state" in r.stderr


def test_unwritable_outputs_are_refused_before_the_run(proj):
    # the run used to train to the end and then fail to write (--json .) or lose its result
    cfg = write(proj, steps=5)
    r = cli(cfg, "--json", proj)
    assert r.exit_code == 2 and f"--json: '{proj}' is a directory" in r.stderr
    (proj / "out").write_text("a file where the output folder should be")
    r = cli(cfg)
    assert r.exit_code == 2 and "ft.yaml:" in r.stderr and "output.checkpoint: cannot write" in r.stderr
    assert "is a file, not a folder" in r.stderr and "step" not in r.stdout


def test_resume_refuses_a_changed_config(proj):
    cfg = write(proj, steps=5)
    assert cli(cfg, "--quiet").exit_code == 0
    cfg.write_text(cfg.read_text().replace("lr: 0.05", "lr: 0.01"))
    r = cli(cfg, "--resume")
    assert r.exit_code == 2 and "config changed" in r.stderr
    # steps may change: extend the finished run
    cfg.write_text(cfg.read_text().replace("lr: 0.01", "lr: 0.05"))
    r = cli(cfg, "--resume", "--steps", "8")
    assert r.exit_code == 0 and "resuming from step 5/8" in r.stderr, r.output


def test_atomic_write_leaves_old_file_and_no_temp_on_failure(tmp_path):
    target = tmp_path / "m.safetensors"
    target.write_bytes(b"old")

    def broken(tmp):
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["m.safetensors"]


def test_atomic_writes_get_the_usual_file_mode(tmp_path, monkeypatch):
    # mkstemp's temporary file is 0600: reports and checkpoints used to be readable by their owner only
    import eqaudit.io.atomic as atomic

    monkeypatch.setattr(atomic, "_UMASK", 0o027)
    new = tmp_path / "new.json"
    atomic.write_text_atomic(new, "{}")
    assert new.stat().st_mode & 0o777 == 0o640
    os.chmod(new, 0o604)
    atomic.write_text_atomic(new, "{ }")  # a replaced file keeps its mode
    assert new.stat().st_mode & 0o777 == 0o604 and new.read_text() == "{ }"


def test_atomic_writes_replace_read_only_files_and_set_the_mode_of_any_writer(tmp_path, monkeypatch):
    # the mode used to be set before writing: a 0444 file could not be replaced, and a writer
    # that replaces the file itself (safetensors) left it 0600
    import eqaudit.io.atomic as atomic

    monkeypatch.setattr(atomic, "_UMASK", 0o022)
    ro = tmp_path / "ro.json"
    ro.write_text("old")
    os.chmod(ro, 0o444)
    atomic.write_text_atomic(ro, "new")
    assert ro.read_text() == "new" and ro.stat().st_mode & 0o777 == 0o444
    ckpt = tmp_path / "w.safetensors"
    atomic.atomic_write(ckpt, lambda tmp: save_file({"w": torch.zeros(2)}, tmp))
    assert ckpt.stat().st_mode & 0o777 == 0o644


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs /dev/shm")
def test_regular_files_under_dev_are_replaced_not_appended(tmp_path):
    from eqaudit.io.atomic import write_text_atomic, writes_in_place

    path = Path("/dev/shm") / f"eqaudit-test-{os.getpid()}.json"
    try:
        write_text_atomic(path, "{}")
        write_text_atomic(path, "{ }")
        assert path.read_text() == "{ }" and not writes_in_place(path)
    finally:
        path.unlink(missing_ok=True)
    assert writes_in_place("/dev/null") and writes_in_place("/dev/stdout")


def test_dataset_callable_and_epochs(proj):
    (proj / "datasets.py").write_text(textwrap.dedent('''
        import torch
        from safetensors.torch import load_file

        class Pairs(torch.utils.data.Dataset):
            def __init__(self, prefix=""):
                d = load_file("data.safetensors" if not prefix else prefix)
                self.x, self.y = d["x"], d["y"]
            def __len__(self):
                return len(self.x)
            def __getitem__(self, i):
                return self.x[i], self.y[i]

        def train(path):
            return Pairs(path)

        def val(path):
            d = load_file(path)
            return d["vx"], d["vy"]
    '''))
    text = CONFIG.format(steps=1, points="data", every=0, threshold=100).replace("steps: 1", "epochs: 2")
    text = text.split("data:")[0] + textwrap.dedent(f"""\
        data:
          dataset: datasets.py:train
          val_dataset: datasets.py:val
          kwargs: {{path: {proj / "data.safetensors"}}}
        batch_size: 16
        output: {{checkpoint: out/ds.safetensors}}
        epochs: 2
        """)
    (proj / "ds.yaml").write_text(text)
    res = run_finetune(load_config(proj / "ds.yaml"), handle_sigint=False)
    assert res.steps == 2 * (96 // 16) and res.report["steps_per_epoch"] == 6
    assert res.metrics_after["split"] == "validation" and res.metrics_after["n"] == 64


def test_library_errors_are_eqaudit_errors(proj):
    cfg = load_config(write(proj))
    with pytest.raises(EqauditError, match="--seed"):
        run_finetune(cfg, seed=-1, handle_sigint=False)


# -- resume: bitwise, after SIGKILL and after Ctrl-C ---------------------------------------------
def _spawn(cfg: Path, *args: str, slow: float = 0.0) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", EQAUDIT_TEST_SLOW_FORWARD=str(slow))
    return subprocess.Popen([sys.executable, "-m", "eqaudit", "finetune", str(cfg), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout, "no periodic checkpoint appeared"
        time.sleep(0.005)


STEPS = 60


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    """Final weights of an uninterrupted run (same seed, same thread settings), computed once."""
    folder = make_project(tmp_path_factory.mktemp("reference"))
    cfg = write(folder, steps=STEPS, every=10, points="both")
    p = _spawn(cfg, "--quiet")
    _, err = p.communicate(timeout=120)
    assert p.returncode in (0, 1), err
    return weights(folder / "out" / "tuned.safetensors")


def test_resume_after_sigkill_is_bitwise_identical(proj, reference):
    cfg = write(proj, steps=STEPS, every=10, points="both")
    out = proj / "out"
    p = _spawn(cfg, "--quiet", slow=0.01)
    _wait_for(out / "tuned.state.pt", p)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=30)
    assert p.returncode == -signal.SIGKILL
    state = torch.load(out / "tuned.state.pt", weights_only=True)  # complete and loadable
    assert 10 <= state["step"] < STEPS, "the run was not killed halfway"
    assert not (out / "tuned.safetensors").exists() and not (out / "tuned.report.json").exists()
    r = _spawn(cfg, "--resume")
    _, err = r.communicate(timeout=120)
    assert r.returncode in (0, 1), err
    assert f"resuming from step {state['step']}/{STEPS}" in err
    tuned = weights(out / "tuned.safetensors")
    assert tuned.keys() == reference.keys()
    assert all(torch.equal(tuned[k], reference[k]) for k in tuned)
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")], os.listdir(out)
    rep = json.loads((out / "tuned.report.json").read_text())
    assert rep["resumed_from_step"] == state["step"] and len(rep["curve"]) == STEPS // 5


def test_ctrl_c_saves_a_resumable_state_and_exits_130(proj, reference):
    cfg = write(proj, steps=STEPS, every=0, points="both")  # no periodic checkpoints: only Ctrl-C saves
    out = proj / "out"
    p = _spawn(cfg, slow=0.01)
    # wait until training has started (the progress lines go to stderr only at 10% steps; poll time)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60:
        if p.poll() is not None:
            break
        line = p.stderr.readline()
        if line.startswith("step "):
            break
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "--resume" in err and "tuned.state.pt" in err
    assert not (out / "tuned.safetensors").exists()
    r = _spawn(cfg, "--resume", "--quiet")
    r.communicate(timeout=120)
    assert r.returncode in (0, 1)
    tuned = weights(out / "tuned.safetensors")
    assert all(torch.equal(tuned[k], reference[k]) for k in tuned)


def test_two_identical_runs_write_identical_bytes(proj):
    # safetensors wrote its metadata in hash-map order: the fine-tuned checkpoints of two
    # identical runs differed byte for byte
    from safetensors import safe_open

    cfg = write(proj, steps=3)
    outputs = []
    for _ in range(2):
        r = cli(cfg, "--quiet", "--force")
        assert r.exit_code == 0, r.output
        outputs.append((proj / "out" / "tuned.safetensors").read_bytes())
    assert outputs[0] == outputs[1]
    size = int.from_bytes(outputs[0][:8], "little")
    header = json.loads(outputs[0][8 : 8 + size])
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])
    with safe_open(str(proj / "out" / "tuned.safetensors"), framework="pt") as fh:  # still a valid file
        assert fh.metadata()["eqaudit"] == "finetune" and fh.metadata()["steps"] == "3"
        assert fh.get_tensor("fc.weight").shape == (2, 16)


def test_non_finite_training_data_is_named_at_its_key(proj):
    # NaN inputs made the loss NaN at the first batch holding one, blamed on optimizer.lr
    tensors = {k: v.clone() for k, v in weights(proj / "data.safetensors").items()}
    tensors["x"][7, 0, 1, 2] = float("nan")
    tensors["vx"][3, 0, 0, 0] = float("inf")
    save_file(tensors, str(proj / "data.safetensors"))
    r = cli(write(proj, steps=2))
    assert r.exit_code == 2, r.output
    assert "data.inputs: the training inputs hold NaN or infinite values (1 of 96 rows, the first row 7)" in r.stderr
    tensors["x"][7, 0, 1, 2] = 0.5
    save_file(tensors, str(proj / "data.safetensors"))
    r = cli(write(proj, steps=2))
    assert r.exit_code == 2 and "data.val_inputs: the validation inputs hold NaN" in r.stderr, r.output
