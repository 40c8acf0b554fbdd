"""A fine-tune never writes over a file it reads (config, data, checkpoint, user code) or over
another of its outputs, even with --force; clashes are exit 2 naming both keys, before training."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import torch

from eqaudit.errors import EqauditError
from eqaudit.finetune import load_config, run_finetune
from finetune_project import cli, make_project, write


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    make_project(tmp_path)
    (tmp_path / "losses.py").write_text(textwrap.dedent("""
        import torch.nn.functional as F

        def ce(outputs, targets):
            return F.cross_entropy(outputs, targets)
        """))
    return tmp_path


def _with_output(proj: Path, key: str, target: str, extra: str = "") -> Path:
    cfg = write(proj, steps=2, extra=extra)
    text = cfg.read_text().replace("output:\n  checkpoint: out/tuned.safetensors\n",
                                   f"output:\n  checkpoint: out/tuned.safetensors\n  {key}: {target}\n")
    if key == "checkpoint":
        text = text.replace("  checkpoint: out/tuned.safetensors\n  checkpoint:", "  checkpoint:")
    cfg.write_text(text)
    return cfg


@pytest.mark.parametrize(
    "key, target, extra, input_key",
    [
        ("checkpoint", "data.safetensors", "", "data.path"),  # the training data
        ("report", "ft.yaml", "", "config"),  # the config itself
        ("state", "models.py", "", "model.factory"),  # the factory's code
        ("report", "tiny.safetensors", "", "model.checkpoint"),  # the checkpoint being fine-tuned
        ("state", "losses.py", "task_loss: losses.py:ce\n", "task_loss"),  # the task-loss code
    ],
)
def test_an_output_that_is_an_input_is_refused_even_with_force(proj, key, target, extra, input_key):
    # each of these exited 0 and destroyed the input (only checkpoint == model.checkpoint was guarded)
    cfg = _with_output(proj, key, target, extra)
    before = (proj / target).read_bytes()
    for args in ((), ("--force",)):
        r = cli(cfg, *args)
        assert r.exit_code == 2, r.output
        msg = r.stderr.strip()
        assert len(msg.splitlines()) == 1 and "Traceback" not in r.output, msg
        assert f"output.{key}:" in msg and f"({input_key})" in msg and "never replaces an input" in msg, msg
        assert (proj / target).read_bytes() == before
    assert not (proj / "out").exists()  # refused before training


def test_an_output_that_links_to_an_input_is_refused(proj):
    os.symlink(proj / "data.safetensors", proj / "link.json")
    cfg = _with_output(proj, "report", "link.json")
    r = cli(cfg, "--force")
    assert r.exit_code == 2 and "output.report:" in r.stderr and "(data.path)" in r.stderr, r.output


def test_the_validation_file_and_dataset_code_are_inputs_too(proj):
    from safetensors.torch import save_file

    save_file({"vx": torch.rand(8, 1, 4, 4), "vy": torch.zeros(8, dtype=torch.long)}, str(proj / "val.safetensors"))
    cfg = write(proj, steps=2)
    text = cfg.read_text().replace("  val_targets: vy\n", "  val_targets: vy\n  val_path: val.safetensors\n")
    cfg.write_text(text.replace("  checkpoint: out/tuned.safetensors\n", "  checkpoint: val.safetensors\n"))
    r = cli(cfg, "--force")
    assert r.exit_code == 2 and "output.checkpoint:" in r.stderr and "(data.val_path)" in r.stderr, r.output
    (proj / "datasets.py").write_text("import torch\n\ndef train():\n    return torch.rand(32, 1, 4, 4), "
                                      "torch.zeros(32, dtype=torch.long)\n")
    text = cfg.read_text().split("data:")[0] + ("data: {dataset: datasets.py:train}\nsteps: 2\nbatch_size: 16\n"
                                               "output: {checkpoint: out/ds.safetensors, state: datasets.py}\n")
    cfg.write_text(text)
    r = cli(cfg, "--force")
    assert r.exit_code == 2 and "output.state:" in r.stderr and "(data.dataset)" in r.stderr, r.output


def test_a_callers_output_is_checked_against_inputs_and_outputs(proj):
    cfg = load_config(write(proj, steps=2))
    with pytest.raises(EqauditError, match=r"--json: .*\(data\.path\)"):
        run_finetune(cfg, handle_sigint=False, other_outputs={"--json": proj / "data.safetensors"})
    with pytest.raises(EqauditError, match=r"output\.report and --json both write"):
        run_finetune(cfg, handle_sigint=False, other_outputs={"--json": proj / "out" / "tuned.report.json"})
    assert not (proj / "out").exists()
