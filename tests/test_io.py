"""The io helpers every command shares: outputs distinct from inputs, regular input files, and
the one reader of named tensors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from eqaudit.errors import EqauditError
from eqaudit.io.files import require_regular_file
from eqaudit.io.outputs import check_distinct
from eqaudit.io.tensors import read_tensor, tensor_names, tensor_shape


# -- check_distinct -------------------------------------------------------------------------------
def test_output_onto_an_input_names_both_keys(tmp_path: Path) -> None:
    spec = tmp_path / "digits.yaml"
    spec.write_text("model: {}\n")
    with pytest.raises(EqauditError) as info:
        check_distinct({"--json": spec}, {"spec": spec})
    assert info.value.key == "--json"
    assert "is the spec this run reads (spec)" in str(info.value)
    assert "never replaces an input" in str(info.value)


def test_output_onto_an_input_through_a_link_or_dotdot(tmp_path: Path) -> None:
    data = tmp_path / "digits.safetensors"
    data.write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    os.symlink(data, tmp_path / "link.safetensors")
    os.link(data, tmp_path / "hard.safetensors")
    for output in (tmp_path / "link.safetensors", tmp_path / "hard.safetensors",
                   tmp_path / "sub" / ".." / "digits.safetensors", str(data)):
        with pytest.raises(EqauditError, match=r"input\.data"):
            check_distinct({"--junit": output}, {"input.data": data})


def test_two_outputs_onto_one_file(tmp_path: Path) -> None:
    with pytest.raises(EqauditError) as info:
        check_distinct({"--json": tmp_path / "r.out", "--junit": str(tmp_path / "r.out")}, {})
    assert "--json and --junit both write" in str(info.value)


def test_distinct_files_and_streams_pass(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("")
    check_distinct({"--json": "-", "--junit": "/dev/stdout", "--markdown": "/dev/stdout",
                    "--plot": tmp_path / "p.png", "output.report": None},
                   {"spec": spec, "model.checkpoint": None})


# -- regular files -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["fifo", "dir", "missing", "device"])
def test_non_regular_inputs_are_refused_without_opening(tmp_path: Path, kind: str) -> None:
    path = {"fifo": tmp_path / "pipe", "dir": tmp_path, "missing": tmp_path / "none",
            "device": Path("/dev/zero")}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    with pytest.raises(EqauditError, match={"fifo": "FIFO", "dir": "directory", "missing": "not found",
                                            "device": "character device"}[kind]):
        require_regular_file(path, "checkpoint")


# -- read_tensor -------------------------------------------------------------------------------
def test_read_tensor_reads_one_named_tensor(tmp_path: Path) -> None:
    path = tmp_path / "d.safetensors"
    save_file({"images": torch.arange(6.0).reshape(3, 2), "labels": torch.zeros(3)}, path)
    assert torch.equal(read_tensor(path, "images"), torch.arange(6.0).reshape(3, 2))
    assert tensor_shape(path, "images") == [3, 2]
    assert sorted(tensor_names(path)) == ["images", "labels"]


def test_read_tensor_missing_name_suggests_the_closest(tmp_path: Path) -> None:
    path = tmp_path / "d.safetensors"
    save_file({"images": torch.zeros(3, 2)}, path)
    with pytest.raises(EqauditError) as info:
        read_tensor(path, "image")
    assert "no tensor 'image'" in str(info.value) and "did you mean 'images'?" in str(info.value)
    assert info.value.key is None  # callers locate it with their own spec key


@pytest.mark.parametrize("content", [b"", b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage", b"not at all"])
def test_read_tensor_corrupt_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "d.safetensors"
    path.write_bytes(content)
    with pytest.raises(EqauditError, match="cannot read .* as safetensors") as info:
        read_tensor(path, "x")
    assert "corrupt or truncated" in (info.value.hint or "")


def test_read_tensor_refuses_a_fifo(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "d.safetensors")
    with pytest.raises(EqauditError, match="FIFO"):
        read_tensor(tmp_path / "d.safetensors", "x")


def test_a_spec_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    from eqaudit.io.yaml_source import load_yaml

    os.mkfifo(tmp_path / "spec.yaml")
    with pytest.raises(EqauditError, match="FIFO") as info:
        load_yaml(tmp_path / "spec.yaml")
    assert info.value.file == str(tmp_path / "spec.yaml")
