"""A tiny PNG encoder (zlib + struct, no imaging library) and tensors as images for the HTML
report: a sample of shape ``(H, W)``, ``(1, H, W)`` or ``(3, H, W)`` becomes a data-URI PNG."""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any


def encode_png(pixels: bytes, width: int, height: int, channels: int) -> bytes:
    """The PNG file of 8-bit ``pixels`` (row-major, ``channels`` 1: grey or 3: RGB)."""
    if channels not in (1, 3) or len(pixels) != width * height * channels:
        raise ValueError("encode_png wants width * height * channels bytes, channels 1 or 3")
    stride = width * channels
    raw = b"".join(b"\x00" + pixels[r * stride:(r + 1) * stride] for r in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0 if channels == 1 else 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def is_image(shape: tuple[int, ...]) -> bool:
    """Whether one sample of this shape shows as an image: ``(H, W)`` or 1 or 3 channels first."""
    if len(shape) == 2:
        return min(shape) >= 2
    return len(shape) == 3 and shape[0] in (1, 3) and min(shape[1:]) >= 2


def tensor_png(t: Any, scale: int = 1, lo: float | None = None, hi: float | None = None) -> bytes:
    """One image sample as PNG bytes, its values mapped linearly from ``[lo, hi]`` (default: its
    own range) to 0..255, each pixel repeated ``scale`` times in both directions."""
    import torch

    x = t.detach().to("cpu", torch.float64)
    if x.dim() == 3:
        x = x.permute(1, 2, 0)  # (H, W, C)
    else:
        x = x.unsqueeze(-1)
    x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    low = float(x.min()) if lo is None else lo
    high = float(x.max()) if hi is None else hi
    span = high - low if high > low else 1.0
    u8 = ((x - low) / span).clamp(0, 1).mul(255).round().to(torch.uint8)
    if scale > 1:
        u8 = u8.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    h, w, c = u8.shape
    return encode_png(bytes(u8.flatten().tolist()), w, h, c)


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` of PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
