"""``--html``: one self-contained page (issue 17, Show): every check present, every image a PNG
that decodes, nothing fetched from the network; the per-sample errors behind it are the audit's."""

from __future__ import annotations

import base64
import shutil
import struct
import sys
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eqaudit.cli import app
from eqaudit.report.png import encode_png

from conftest import write_spec

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


class Page(HTMLParser):
    """The parts of the page the tests look at."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.checks: list[str] = []
        self.links: list[str] = []
        self.svgs = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src") or "")
        if tag == "svg":
            self.svgs += 1
        if a.get("data-check"):
            self.checks.append(a["data-check"] or "")
        for key in ("href", "src"):
            if a.get(key) and tag != "img":
                self.links.append(a[key] or "")


def decode_png(data: bytes) -> tuple[int, int, int]:
    """Width, height, channels of a PNG (signature, chunk CRCs and the pixel stream checked)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert header is not None
    w, h, depth, color = header[:4]
    channels = {0: 1, 2: 3}[color]
    assert depth == 8 and len(zlib.decompress(idat)) == h * (1 + w * channels)
    return w, h, channels


def parsed(path: Path) -> tuple[str, Page]:
    text = path.read_text()
    page = Page()
    page.feed(text)
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert all(link.startswith("#") for link in page.links), page.links
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        decode_png(base64.b64decode(src.split(",", 1)[1]))
    return text, page


def test_png_encoder_round_trip() -> None:
    assert decode_png(encode_png(bytes(range(12)), 2, 2, 3)) == (2, 2, 3)
    assert decode_png(encode_png(bytes(6), 3, 2, 1)) == (3, 2, 1)


@pytest.fixture
def digits(tmp_path: Path, monkeypatch) -> Path:
    for name in ("digits.yaml", "digits.safetensors", "digits_cnn.safetensors"):
        shutil.copy(ROOT / "sample_configs" / name, tmp_path / name)
    shutil.copytree(ROOT / "sample_configs" / "sample_models", tmp_path / "sample_models")
    for name in [m for m in sys.modules if m.split(".")[0] == "sample_models"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.chdir(tmp_path)
    text = (tmp_path / "digits.yaml").read_text().replace("threshold: 0.8", "threshold: 0.3")
    (tmp_path / "failing.yaml").write_text(text)
    return tmp_path


def test_measure_html_classifier(digits: Path) -> None:
    r = runner.invoke(app, ["measure", "--spec", "failing.yaml", "--samples", "128", "--html", "r.html", "--quiet"])
    assert r.exit_code == 1, r.output
    text, page = parsed(digits / "r.html")
    names = ["shift-right", "shift-down", "shift-random", "rot90", "hflip", "vflip"]
    assert all(n in page.checks for n in names)
    assert text.count("threshold 0.") >= len(names)  # every histogram marks its threshold
    assert "FAILED: rot90" in text
    assert len(page.images) == 3 * 2  # the 3 worst rot90 samples: input and rotated input
    assert text.count("model(f_in(x))") >= 3 and "<rect" in text  # probability bars of both outputs


def test_measure_html_image_outputs(project: Path, monkeypatch) -> None:
    (project / "models.py").write_text((project / "models.py").read_text() + (
        "\nclass Roll(torch.nn.Module):\n    def forward(self, x):\n        return torch.roll(x, 1, -1)\n"))
    write_spec(project, """
        model: {factory: models.py:Roll}
        input: {shape: [1, 8, 8]}
        samples: 64
        checks:
          - {name: flip, both: hflip, threshold: 0.01}
          - {name: shift, both: {shift: {dx: 1}}, threshold: 0.5}
    """)
    monkeypatch.chdir(project)
    r = runner.invoke(app, ["measure", "--spec", "spec.yaml", "--html", "r.html", "--quiet"])
    assert r.exit_code == 1, r.output
    text, page = parsed(project / "r.html")
    assert {"flip", "shift"} <= set(page.checks)
    assert len(page.images) == 3 * 4  # flip fails: input, flipped input and both output images
    # a both: check's section names its one transform and the shared draw, not "hflip → hflip"
    assert "both: hflip (same draw)" in text and "hflip → hflip" not in text


def test_html_errors_are_the_audits(digits: Path) -> None:
    """The page's per-sample errors are the audit's: their mean is the report's mean."""
    from eqaudit.engine.run import audit
    from eqaudit.engine.worst import check_samples
    from eqaudit.spec import load_spec

    spec = load_spec("digits.yaml").replace(samples=128)
    report = audit(None, spec, device="cpu")
    found = check_samples(spec, device="cpu", worst_of={"rot90"})
    for s in found:
        assert sum(s.errors) / len(s.errors) == pytest.approx(report.check(s.name).mean, rel=1e-9, abs=1e-12)
    worst = next(s for s in found if s.name == "rot90").worst
    assert [e.error for e in worst] == sorted((e for e in next(s for s in found if s.name == "rot90").errors),
                                              reverse=True)[:3]


def test_html_with_several_checkpoints_is_refused(digits: Path) -> None:
    r = runner.invoke(app, ["measure", "digits_cnn.safetensors", "digits_cnn.safetensors", "--spec", "digits.yaml",
                            "--html", "r.html"])
    assert r.exit_code == 2 and "--html" in r.stderr
    assert not (digits / "r.html").exists()


def test_sweep_html_marks_threshold_and_own_value(digits: Path) -> None:
    r = runner.invoke(app, ["sweep", "--spec", "digits.yaml", "--check", "shift-right", "--param", "dx",
                            "--values", "-2:2:1", "--samples", "64", "--html", "s.html", "-q"])
    assert r.exit_code == 0, r.output
    text, page = parsed(digits / "s.html")
    assert "shift-right" in page.checks and "threshold 0.2" in text and "check's value" in text
    assert "<polygon" in text and "<polyline" in text  # the CI band and the curve


def test_failing_checks_come_first(digits: Path) -> None:
    r = runner.invoke(app, ["measure", "--spec", "failing.yaml", "--samples", "64", "--html", "r.html"])
    assert r.exit_code == 1
    assert "FAILED: rot90 exceeds its threshold" in " ".join(r.stderr.split())  # one check: singular
    _, page = parsed(digits / "r.html")
    assert page.checks[0] == "rot90"


@pytest.mark.parametrize("mask", ["none", "valid"])
def test_worst_of_shows_distinct_samples_at_their_worst_draw(project: Path, mask: str) -> None:
    """A worst_of check's K draws all carry the per-sample maximum: the worst samples are still
    distinct samples, each shown with the draw whose own error is that maximum, and the error shown
    is the audited one (``mask: valid`` included: the view once computed it again without the mask)."""
    from eqaudit.engine.worst import check_samples
    from eqaudit.spec import load_spec

    (project / "models.py").write_text((project / "models.py").read_text() + (
        "\nclass Roll(torch.nn.Module):\n    def forward(self, x):\n        return torch.roll(x, 1, -1)\n"))
    path = write_spec(project, f"""
        model: {{factory: models.py:Roll}}
        input: {{shape: [1, 8, 8]}}
        samples: 64
        checks:
          - {{name: wrot, both: {{rotate: {{degrees: [-30, 30]}}}}, worst_of: 4, mask: {mask}, threshold: 0.01}}
    """)
    (found,) = check_samples(load_spec(path), device="cpu", worst_of={"wrot"})
    rows = [e.index for e in found.worst]
    assert len(rows) == 3 and len(set(rows)) == 3
    assert [e.error for e in found.worst] == [found.errors[r] for r in rows]
    assert [e.error for e in found.worst] == sorted(found.errors, reverse=True)[:3]


def test_worst_samples_of_a_grid_worst_of_check_use_the_draws_own_transforms(tmp_path: Path) -> None:
    """A grid's draws are fixed transforms, not the check's random one: the HTML view applies the
    draw's own (the check's rotate with the draw's None parameters raised before)."""
    import torch

    from conftest import write_digits_spec
    from eqaudit.engine.worst import check_samples
    from eqaudit.spec import load_spec

    path = write_digits_spec(tmp_path / "grid.yaml", "  - name: grid\n    input: {rotate: {degrees: [-30, 30]}}\n"
                             "    worst_of: {grid: {degrees: [-20, 20, 5]}}\n", distance="relative_l2",
                             samples=64, seed=5)
    (found,) = check_samples(load_spec(path), device="cpu", worst_of={"grid"})
    assert len(found.worst) == 3
    assert [e.error for e in found.worst] == sorted(found.errors, reverse=True)[:3]
    for example in found.worst:
        assert example.transformed.shape == example.x.shape and not torch.equal(example.transformed, example.x)
