"""``input.data`` where users keep it (issue 18): .npy, .npz:key, .pt/.pth[:key], a folder of
images and ``input.dataset`` give exactly the audit numbers of the safetensors form of the same
tensor (same seed, same points); bad files are one-line exit-2 errors naming the file and key, in
``validate`` as in ``measure``; nothing in a data file runs as code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from eqaudit.cli import app
from eqaudit.errors import EqauditError
from eqaudit.io.datasets import dataset_inputs, read_data
from eqaudit.spec import spec_from_dict

from conftest import write_spec

runner = CliRunner()
N_ROWS = 10

DATASET_PY = """
import torch
from safetensors.torch import load_file

class Pairs(torch.utils.data.Dataset):
    def __init__(self):
        self.x = load_file("{folder}/d.safetensors")["x"]
    def __len__(self):
        return len(self.x)
    def __getitem__(self, i):
        return self.x[i], i % 3

def make():
    return Pairs()

def bare():
    return torch.utils.data.TensorDataset(load_file("{folder}/d.safetensors")["x"])

def words():
    return [("a", 1), ("b", 2)]

def empty():
    return torch.utils.data.TensorDataset(torch.zeros(0, 1, 8, 8))

def boom():
    return 1 / 0

def counted():
    with open("{folder}/calls.txt", "a") as fh:
        fh.write("call\\n")
    return bare()

def ragged():
    return [torch.zeros(1, 8, 8), torch.zeros(1, 8, 7)]
"""


def _pixels(channels: int) -> torch.Tensor:
    """Samples that a PNG stores exactly: 8-bit values / 255 in float32."""
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 256, (N_ROWS, channels, 8, 8), generator=g, dtype=torch.uint8).float() / 255.0


def _save_all(folder: Path, x: torch.Tensor) -> None:
    """``x`` in every format the spec can name."""
    from PIL import Image

    save_file({"x": x, "other": x[:2].clone()}, str(folder / "d.safetensors"))
    np.save(folder / "d.npy", x.numpy())
    np.savez(folder / "d.npz", x=x.numpy(), other=x[:2].numpy())
    torch.save({"x": x, "other": x[:2]}, folder / "dict.pt")
    torch.save(x, folder / "one.pth")
    (folder / "images").mkdir()
    (folder / "images" / "notes.txt").write_text("not an image")
    for i, row in enumerate(x):
        u8 = (row * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        img = Image.fromarray(u8[..., 0], "L") if u8.shape[-1] == 1 else Image.fromarray(u8, "RGB")
        img.save(folder / "images" / f"img_{i:03d}.png")  # names sort as the rows do
    (folder / "ds.py").write_text(DATASET_PY.format(folder=folder.as_posix()))


def _spec(folder: Path, input_block: str, name: str = "spec.yaml") -> Path:
    return write_spec(folder, f"""
        model: {{factory: models.py:PixelReader}}
        input: {input_block}
        samples: 24
        seed: 5
        checks:
          - {{name: flip, input: hflip, threshold: 1}}
          - {{name: shift, input: {{shift: {{dx: 1, dy: 0}}}}, threshold: 1}}
        """, name)


def _checks(folder: Path, input_block: str) -> list[dict]:
    spec = _spec(folder, input_block)
    out = folder / "r.json"
    r = runner.invoke(app, ["measure", "--spec", str(spec), "--json", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    return json.loads(out.read_text())["checks"]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("sampling", ["random", "sequential"])
def test_every_format_gives_the_numbers_of_the_safetensors_form(project: Path, sampling: str, channels: int) -> None:
    x = _pixels(channels)
    _save_all(project, x)
    shape = f"[{channels}, 8, 8]"
    truth = _checks(project, f"{{data: 'd.safetensors:x', sampling: {sampling}}}")
    assert truth[0]["mean"] > 0 and truth[0]["n"] == 24  # a non-trivial audit to compare against
    for block in ("'d.npy'", "'d.npz:x'", "'dict.pt:x'", "'one.pth'", f"'images', shape: {shape}",
                  f"'images/', shape: {shape}"):
        assert _checks(project, f"{{data: {block}, sampling: {sampling}}}") == truth, block
    for ref in ("ds.py:make", "ds.py:bare"):
        assert _checks(project, f"{{dataset: '{ref}', sampling: {sampling}}}") == truth, ref
    other = _checks(project, f"{{data: 'd.npz:other', sampling: {sampling}}}")
    assert other != truth  # the key is honoured: two rows give other numbers


def _exit_2(folder: Path, input_block: str, *words: str) -> None:
    """measure and validate both refuse with one line holding ``words`` (exit 2)."""
    spec = _spec(folder, input_block)
    for args in (["measure", "--spec", str(spec), "--quiet"], ["validate", str(spec)]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        line = r.stderr.strip()
        assert len(line.splitlines()) == 1 and line.startswith("eqaudit: error:"), r.stderr
        assert all(w in line for w in words), line


def test_bad_files_are_exit_2_naming_the_file_and_the_key(project: Path) -> None:
    x = _pixels(1)
    _save_all(project, x)
    np.save(project / "text.npy", np.array(["a", "b"]))
    np.save(project / "objects.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    np.savez(project / "mixed.npz", images=x.numpy(), when=np.array(["2020-01-01"], dtype="datetime64[D]"))
    torch.save([x], project / "list.pt")
    torch.save({"x": torch.zeros(3, 2, dtype=torch.complex64)}, project / "complex.pt")
    (project / "empty").mkdir()
    (project / "junk").mkdir()
    (project / "junk" / "a.png").write_bytes(b"not a png at all")
    (project / "small").mkdir()
    from PIL import Image

    Image.new("L", (6, 6)).save(project / "small" / "a.png")
    cases = [
        ("{data: 'd.npz:images'}", ["input.data", "d.npz", "no array 'images'", "expected one of: other, x"]),
        ("{data: 'mixed.npz:image'}", ["mixed.npz", "no array 'image'", "did you mean 'images'"]),
        ("{data: 'dict.pt:xx'}", ["dict.pt", "no tensor 'xx'", "did you mean 'x'"]),
        ("{data: 'dict.pt'}", ["dict.pt", "dict of tensors", "x, other"]),
        ("{data: 'list.pt'}", ["list.pt", "holds a list", "expected a tensor or a dict of tensors"]),
        ("{data: 'complex.pt:x'}", ["complex.pt", "complex64", "not real numbers"]),
        ("{data: 'text.npy'}", ["text.npy", "dtype <U1", "not numbers"]),
        ("{data: 'mixed.npz:when'}", ["'when' in", "mixed.npz", "datetime64", "not numbers"]),
        ("{data: 'objects.npy'}", ["objects.npy", "object array"]),
        ("{data: 'empty', shape: [1, 8, 8]}", ["input.data", "no images in", "empty"]),
        ("{data: 'junk', shape: [1, 8, 8]}", ["input.data", "cannot read image", "a.png"]),
        ("{data: 'small', shape: [1, 8, 8]}", ["a.png", "6x6", "8x8", "input.resize: true"]),
        ("{data: 'images', shape: [2, 8, 8]}", ["images", "C = 1 (grayscale) or 3 (RGB)"]),
        ("{data: 'images', shape: [1, 8, 9]}", ["img_000.png", "8x8", "9x8"]),
        ("{data: 'images', shape: [1, 8, 8], sampling: sobol}", ["input.sampling", "sobol"]),
        ("{dataset: 'ds.py:words'}", ["input.dataset", "item 0", "str input, expected a tensor"]),
        ("{dataset: 'ds.py:empty'}", ["input.dataset", "is empty"]),
        ("{dataset: 'ds.py:nope'}", ["input.dataset", "nope"]),
        ("{dataset: 'ds.py:boom'}", ["input.dataset", "calling ds.py:boom failed: ZeroDivisionError"]),
        ("{dataset: 'ds.py:ragged'}", ["input.dataset", "item 1", "[1, 8, 7]", "item 0 [1, 8, 8]"]),
        ("{dataset: 'ds.py:make', shape: [1, 8, 9]}", ["input.shape", "[1, 8, 8]", "the spec says [1, 8, 9]"]),
    ]
    for block, words in cases:
        _exit_2(project, block, *words)


def test_validate_reads_a_dataset_once_and_accepts_what_measure_reads(project: Path) -> None:
    _save_all(project, _pixels(1))
    spec = _spec(project, "{dataset: 'ds.py:counted', sampling: sequential}")
    r = runner.invoke(app, ["validate", str(spec)])
    assert r.exit_code == 0, r.output
    assert (project / "calls.txt").read_text().splitlines() == ["call"]  # not once per validation step
    assert runner.invoke(app, ["measure", "--spec", str(spec), "--quiet"]).exit_code == 0


def test_a_size_mismatch_is_resized_bilinearly_when_asked(project: Path) -> None:
    from PIL import Image

    (project / "big").mkdir()
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (12, 10, 3), generator=g, dtype=torch.uint8).numpy()
    Image.fromarray(u8, "RGB").save(project / "big" / "a.png")
    got = read_data(project / "big", None, (3, 8, 8), resize=True)
    want = np.asarray(Image.fromarray(u8, "RGB").resize((8, 8), Image.Resampling.BILINEAR))
    assert got.dtype == torch.float32 and got.shape == (1, 3, 8, 8)
    assert torch.equal(got[0], torch.from_numpy(want.copy()).permute(2, 0, 1).float() / 255.0)
    gray = read_data(project / "big", None, (1, 8, 8), resize=True)  # RGB -> L
    want_gray = np.asarray(Image.fromarray(u8, "RGB").convert("L").resize((8, 8), Image.Resampling.BILINEAR))
    assert torch.equal(gray[0, 0], torch.from_numpy(want_gray.copy()).float() / 255.0)
    assert 0.0 <= float(got.min()) and float(got.max()) <= 1.0
    spec = _spec(project, "{data: big, shape: [3, 8, 8], resize: true}")
    assert runner.invoke(app, ["measure", "--spec", str(spec), "--quiet"]).exit_code in (0, 1)


def test_jpeg_files_of_any_case_are_read_as_pillow_decodes_them(project: Path) -> None:
    from PIL import Image

    (project / "photos").mkdir()
    g = torch.Generator().manual_seed(1)
    for name in ("b.JPG", "a.jpeg", "c.png"):
        u8 = torch.randint(0, 256, (8, 8, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(u8, "RGB").save(project / "photos" / name)
    got = read_data(project / "photos", None, (3, 8, 8))
    for row, name in zip(got, ("a.jpeg", "b.JPG", "c.png"), strict=True):  # sorted by file name
        with Image.open(project / "photos" / name) as img:
            want = np.asarray(img.convert("RGB"))
        assert torch.equal(row, torch.from_numpy(want.copy()).permute(2, 0, 1).float() / 255.0), name


class _Marker:
    """A pickle payload: unpickling it would create the marker file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.path, "w"))


def test_a_pickle_payload_in_a_pt_file_never_runs(project: Path) -> None:
    marker = project / "pwned"
    torch.save({"x": _Marker(marker)}, project / "evil.pt")
    torch.save(_Marker(marker), project / "evil_top.pth")
    assert not marker.exists()
    _exit_2(project, "{data: 'evil.pt:x'}", "input.data", "evil.pt", "more than tensors")
    _exit_2(project, "{data: 'evil_top.pth'}", "input.data", "evil_top.pth", "more than tensors")
    assert not marker.exists()


def test_fifos_are_refused_without_blocking(project: Path) -> None:
    os.mkfifo(project / "d.npy")
    _exit_2(project, "{data: 'd.npy'}", "input.data", "d.npy", "FIFO")
    (project / "imgs").mkdir()
    os.mkfifo(project / "imgs" / "a.png")
    _exit_2(project, "{data: imgs, shape: [1, 8, 8]}", "input.data", "a.png", "FIFO")


@pytest.mark.parametrize("block, key, words", [
    ("{data: 'd.npy:x'}", "input.data", ["takes no ':x'"]),
    ("{data: 'd.npz'}", "input.data", ["needs the name of a tensor", "d.npz:key"]),
    ("{data: 'd.safetensors'}", "input.data", ["needs the name of a tensor"]),
    ("{data: 'images:x', shape: [1, 8, 8]}", "input.data", ["takes no ':x'"]),
    ("{data: 'images'}", "input.shape", ["folder of images needs the shape"]),
    ("{data: 'd.npy', resize: true}", "input.resize", ["folder of images"]),
    ("{data: 'images', shape: [1, 8, 8], resize: 1}", "input.resize", ["true or false"]),
    ("{data: 'd.npy', dataset: 'ds.py:make'}", "input.dataset", ["either 'data' or 'dataset'"]),
    ("{dataset: 'ds.py:make', bounds: [0, 1]}", "input.bounds", ["either 'bounds' or 'dataset'"]),
    ("{dataset: 'no-colon'}", "input.dataset", ["module:callable"]),
    ("{data: 'nothere.npy'}", "input.data", ["not found"]),
])
def test_data_references_are_checked_at_parse_time(project: Path, block: str, key: str, words: list[str]) -> None:
    _save_all(project, _pixels(1))
    _exit_2(project, block, key, *words)


def test_the_data_files_are_inputs_that_no_output_replaces(project: Path) -> None:
    _save_all(project, _pixels(1))
    files = spec_from_dict({"input": {"data": "images", "shape": [1, 8, 8]}, "checks": [{"input": "hflip"}]},
                           base_dir=project).input_files()
    assert [files[f"input.data[{i}]"] for i in range(N_ROWS)] == \
        [(project / "images" / f"img_{i:03d}.png").resolve() for i in range(N_ROWS)]
    assert not any("notes.txt" in str(p) for p in files.values())
    files = spec_from_dict({"input": {"dataset": "ds.py:make"}, "checks": [{"input": "hflip"}]},
                           base_dir=project).input_files()
    assert files["input.dataset"] == (project / "ds.py").resolve()
    spec = _spec(project, "{data: 'images', shape: [1, 8, 8]}")
    before = (project / "images" / "img_003.png").read_bytes()
    r = runner.invoke(app, ["measure", "--spec", str(spec), "--json", str(project / "images" / "img_003.png")])
    assert r.exit_code == 2 and "an output never replaces an input" in r.stderr, r.output
    assert (project / "images" / "img_003.png").read_bytes() == before
    spec = _spec(project, "{data: 'd.npz:x'}")
    r = runner.invoke(app, ["measure", "--spec", str(spec), "--json", str(project / "d.npz")])
    assert r.exit_code == 2 and "data file" in r.stderr, r.output


def test_a_dataset_too_large_to_stack_is_refused_before_reading_it() -> None:
    reads = []

    class Big(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 1000

        def __getitem__(self, i: int):  # noqa: ANN204
            reads.append(i)
            return torch.zeros(4, 4), 0

    with pytest.raises(EqauditError, match="more than 1,000 elements"):
        dataset_inputs(Big(), "m:big", max_elements=1000)
    assert reads == [0]  # one item read to learn the shape, not the thousand
    assert dataset_inputs(Big(), "m:big", max_elements=16000).shape == (1000, 4, 4)


def test_an_image_folder_without_pillow_says_how_to_install_it(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    _save_all(project, _pixels(1))
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(EqauditError) as info:
        read_data(project / "images", None, (1, 8, 8))
    assert "needs Pillow" in info.value.message and "eqaudit[images]" in str(info.value.hint)
