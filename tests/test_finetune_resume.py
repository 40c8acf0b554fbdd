"""A resumed fine-tune is the run it claims to continue: the files its updates read are unchanged,
and its state file is complete, well typed and never runs code."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from finetune_project import CONFIG, cli, make_project, write


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    return make_project(tmp_path)


def _finished_run(proj: Path, extra: str = "") -> Path:
    cfg = write(proj, steps=5, extra=extra)
    r = cli(cfg, "--quiet")
    assert r.exit_code == 0, r.output
    return cfg


def _line_of(cfg: Path, text: str) -> int:
    return next(i for i, line in enumerate(cfg.read_text().splitlines(), 1) if text in line)


def _change_data(proj: Path) -> None:
    tensors = load_file(str(proj / "data.safetensors"))
    tensors["x"] = tensors["x"].flip(-1)  # same shapes and names, other contents
    save_file(tensors, str(proj / "data.safetensors"))


def _change_checkpoint(proj: Path) -> None:
    tensors = load_file(str(proj / "tiny.safetensors"))
    save_file({k: v + 1 for k, v in tensors.items()}, str(proj / "tiny.safetensors"))


def _append(name: str, text: str):
    def change(proj: Path) -> None:
        with open(proj / name, "a") as fh:
            fh.write(text)
    return change


LOSSES = textwrap.dedent("""
    import torch.nn.functional as F

    def ce(outputs, targets):
        return F.cross_entropy(outputs, targets)
    """)


@pytest.mark.parametrize(
    "change, extra, key, words",
    [
        (_change_data, "", "data.path", "data file 'data.safetensors' changed since the run started"),
        (_change_checkpoint, "", "model.checkpoint", "checkpoint 'tiny.safetensors' changed since the run started"),
        (_append("models.py", "\nSCALE = 2\n"), "", "model.factory", "model code 'models.py' changed"),
        (_append("losses.py", "\n# a different loss\n"), "task_loss: losses.py:ce\n", "task_loss",
         "task-loss code 'losses.py' changed"),
    ],
)
def test_resume_refuses_changed_inputs(proj, change, extra, key, words):
    # the fingerprint covered only the YAML: a changed data file or factory resumed with exit 0
    (proj / "losses.py").write_text(LOSSES)
    cfg = _finished_run(proj, extra)
    saved = {p: p.read_bytes() for p in proj.iterdir() if p.is_file()}
    change(proj)
    r = cli(cfg, "--resume", "--steps", "8")
    assert r.exit_code == 2, r.output
    msg = r.stderr.strip()
    assert len(msg.splitlines()) == 1 and "Traceback" not in r.output, msg
    line = _line_of(cfg, key.split(".")[-1] + ":")
    assert f"{cfg}:{line}: {key}: {words}" in msg, msg
    for path, data in saved.items():  # restored contents resume (the check is on contents)
        path.write_bytes(data)
    r = cli(cfg, "--resume", "--steps", "8")
    assert r.exit_code == 0 and "resuming from step 5/8" in r.stderr, r.output


def test_resume_refuses_a_changed_dataset_module(proj):
    (proj / "datasets.py").write_text(textwrap.dedent("""
        from safetensors.torch import load_file

        def train(path):
            d = load_file(path)
            return d["x"], d["y"]
        """))
    text = CONFIG.format(steps=5, points="data", every=10, threshold=100).split("data:")[0] + textwrap.dedent(f"""\
        data:
          dataset: datasets.py:train
          kwargs: {{path: {proj / "data.safetensors"}}}
        batch_size: 16
        steps: 5
        output: {{checkpoint: out/ds.safetensors}}
        """)
    cfg = proj / "ds.yaml"
    cfg.write_text(text)
    assert cli(cfg, "--quiet").exit_code == 0
    with open(proj / "datasets.py", "a") as fh:
        fh.write("\n# changed\n")
    r = cli(cfg, "--resume", "--steps", "8")
    assert r.exit_code == 2 and "data.dataset: dataset code 'datasets.py' changed since the run started" in r.stderr


def _damage(proj: Path, edit) -> Path:
    cfg = _finished_run(proj)
    state_path = proj / "out" / "tuned.state.pt"
    state = torch.load(state_path, weights_only=True)
    edit(state)
    torch.save(state, state_path)
    return cfg


def _set(key, value):
    def edit(state):
        state[key] = value
    return edit


def _drop(key):
    def edit(state):
        del state[key]
    return edit


def _set_in(key, inner, value):
    def edit(state):
        state[key][inner] = value
    return edit


@pytest.mark.parametrize(
    "edit, words",
    [
        (_set("step", -5), "step: is -5, expected a step count >= 0"),
        (_drop("model"), "model: missing"),
        (_drop("inputs"), "inputs: missing"),
        (_set("step", "5"), "step: expected an integer, got str"),
        (_set("curve", 5), "curve: expected a mapping, got int"),
        (_set("model", {"fc.weight": "w"}), "model: expected a state dict of tensors"),
        (_set("model", {"fc.weight": torch.zeros(3)}), "cannot be restored"),
        (_set("optimizer", {}), "cannot be restored"),
        (_set("before", {}), "cannot be restored"),
        (_set_in("rng", "cpu", torch.zeros(3)), "cannot be restored"),
        (_set_in("curve", "window", {"n": 1}), "cannot be restored"),
        (_set("metrics_before", {"loss": torch.zeros(1)}), "metrics_before: expected plain values"),
    ],
)
def test_a_damaged_state_is_exit_2_naming_the_state_file(proj, edit, words):
    # step: -5 resumed and missing keys raised KeyError: 'model' (exit 1 with a Python error)
    cfg = _damage(proj, edit)
    r = cli(cfg, "--resume", "--steps", "8")
    assert r.exit_code == 2, r.output
    msg = r.stderr.strip()
    assert len(msg.splitlines()) == 1 and "Traceback" not in r.output, msg
    assert str(proj / "out" / "tuned.state.pt") in msg and words in msg, msg
    assert "--force" in msg


def test_a_state_that_is_a_symlink_loop_is_exit_2(proj):
    cfg = _finished_run(proj)
    state = proj / "out" / "tuned.state.pt"
    state.unlink()
    os.symlink(state.name, state)  # points at itself
    r = cli(cfg, "--resume", "--steps", "8")
    assert r.exit_code == 2, r.output
    assert str(state) in r.stderr and "symbolic links" in r.stderr and "Traceback" not in r.output, r.stderr


class _RunsCode:
    """A pickle whose loading runs a command (torch.load without weights_only would run it)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_state_file_never_runs_code(proj):
    cfg = _finished_run(proj)
    marker = proj / "ran"
    state_path = proj / "out" / "tuned.state.pt"
    state = torch.load(state_path, weights_only=True)
    state["curve"] = _RunsCode(marker)
    torch.save(state, state_path)
    r = cli(cfg, "--resume", "--steps", "8")
    assert r.exit_code == 2 and "cannot read the resumable state" in r.stderr, r.output
    assert not marker.exists()


def test_the_state_holds_only_weights_only_types_and_the_input_digests(proj):
    _finished_run(proj)
    state = torch.load(proj / "out" / "tuned.state.pt", weights_only=True)
    assert set(state["inputs"]) == {"model.checkpoint", "model.factory", "data.path"}
    import hashlib

    assert state["inputs"]["data.path"] == hashlib.sha256((proj / "data.safetensors").read_bytes()).hexdigest()


def test_a_resumed_run_reports_the_same_audit_before(proj):
    # the report rebuilt from the state dropped noise_floor, sampling and target_halfwidth
    import json

    cfg = write(proj, steps=5)
    cfg.write_text(cfg.read_text().replace("  bounds: [0, 1]\n", "  bounds: [0, 1]\n  sampling: sobol\n"))
    assert cli(cfg, "--quiet").exit_code == 0
    first = json.loads((proj / "out" / "tuned.report.json").read_text())["before"]["audit"]
    assert first["sampling"] == "sobol" and first["noise_floor"] is not None
    r = cli(cfg, "--resume", "--steps", "8", "--quiet")
    assert r.exit_code == 0, r.output
    resumed = json.loads((proj / "out" / "tuned.report.json").read_text())
    assert resumed["resumed_from_step"] == 5
    assert resumed["before"]["audit"] == first


def test_a_resume_with_another_seed_says_so(proj):
    # it said "the config changed" although the config was the same and only --seed differed
    cfg = _finished_run(proj)
    r = cli(cfg, "--resume", "--steps", "8", "--seed", "4")
    assert r.exit_code == 2 and "saved by a run with seed 3, this run has seed 4" in r.stderr, r.output
    assert cli(cfg, "--resume", "--steps", "8", "--seed", "3", "--quiet").exit_code == 0


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_state_that_is_a_fifo_is_refused_without_blocking(proj):
    # it was reported as missing ("no resumable state"); it must never be opened (it would block)
    import subprocess
    import sys

    cfg = _finished_run(proj)
    state = proj / "out" / "tuned.state.pt"
    state.unlink()
    os.mkfifo(state)
    r = subprocess.run([sys.executable, "-m", "eqaudit", "finetune", str(cfg), "--resume", "--steps", "8"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert f"resumable state '{state}' is a FIFO (named pipe), not a regular file" in r.stderr
