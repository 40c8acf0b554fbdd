"""A folder of PNG/JPEG images as one tensor of samples (``input.data: folder/``): read with Pillow
(the optional ``images`` extra), sorted by file name, converted to the channel count of
``input.shape`` (1: grayscale ``L``, 3: ``RGB``), resized (bilinear) only when asked, and scaled to
[0, 1] as float32."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import EqauditError
from .files import require_regular_file

__all__ = ["IMAGE_SUFFIXES", "image_files", "read_image_folder"]

#: The file names read from an image folder (any case); other files and subfolders are ignored.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_MODES = {1: "L", 3: "RGB"}


def image_files(folder: Path) -> list[Path]:
    """The images of ``folder`` (by suffix), sorted by file name; [] when it cannot be listed."""
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return []
    return sorted((p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir()),
                  key=lambda p: p.name)


def _pillow():  # noqa: ANN202 - the PIL.Image module
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise EqauditError("reading a folder of images needs Pillow, which is not installed",
                           hint="pip install 'eqaudit[images]'") from None
    return Image, UnidentifiedImageError


def _check_shape(folder: Path, shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) != 3 or shape[0] not in _MODES:
        raise EqauditError(f"images in '{folder}' need input.shape [C, H, W] with C = 1 (grayscale) or 3 (RGB), "
                           f"got {list(shape) or 'none'}", hint="e.g. input: {data: images/, shape: [3, 64, 64]}")
    return shape[0], shape[1], shape[2]


def read_image_folder(folder: Path, shape: tuple[int, ...], *, resize: bool = False,
                      max_elements: int | None = None) -> torch.Tensor:
    """The images of ``folder`` as a float32 tensor of shape ``(n, *shape)`` in [0, 1].

    ``shape`` is ``[C, H, W]`` with C 1 or 3. An image of another size is resized (bilinear) when
    ``resize``, else refused. Raises :class:`EqauditError` (no location) naming the folder or the
    image: no images, Pillow missing, a file that is not a regular file or not a readable image,
    more than ``max_elements`` elements in all.
    """
    folder = Path(folder)
    channels, height, width = _check_shape(folder, shape)
    files = image_files(folder)
    if not files:
        raise EqauditError(f"no images in '{folder}'",
                           hint="the folder must hold .png, .jpg or .jpeg files (subfolders are not read)")
    if max_elements is not None and len(files) * math.prod(shape) > max_elements:
        raise EqauditError(f"'{folder}' holds {len(files)} images of shape {list(shape)}: more than "
                           f"{max_elements:,} elements in all", hint="audit a subset of the images")
    image_mod, unidentified = _pillow()
    out = torch.empty((len(files), channels, height, width), dtype=torch.float32)
    for i, path in enumerate(files):
        require_regular_file(path, "image")
        try:
            with image_mod.open(path) as img:
                img = img.convert(_MODES[channels])
                if img.size != (width, height):
                    if not resize:
                        raise EqauditError(
                            f"image '{path}' is {img.size[0]}x{img.size[1]} (W x H), input.shape says "
                            f"{width}x{height}", hint="resize the images, or set input.resize: true")
                    img = img.resize((width, height), image_mod.Resampling.BILINEAR)
                pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        except EqauditError:
            raise
        except (unidentified, OSError, ValueError, SyntaxError) as exc:
            why = " ".join(str(exc).split())[:200]
            raise EqauditError(f"cannot read image '{path}': {why}",
                               hint="the file may be corrupt or not a PNG/JPEG; remove it from the folder") from None
        out[i] = pixels.reshape(height, width, channels).permute(2, 0, 1).to(torch.float32) / 255.0
    return out
