"""Write ``digits.safetensors``: scikit-learn's 8x8 handwritten digits as a fixed train/val split.

The data ships with scikit-learn (no download). Pixels are scaled from 0..16 to [0, 1] and stored
as float32 images of shape (N, 1, 8, 8); labels are int64. The split is stratified by class with a
fixed seed: 1437 training and 360 validation images.

    python sample_configs/make_digits_data.py            # writes sample_configs/digits.safetensors

Keys: ``train_images``, ``train_labels``, ``val_images``, ``val_labels``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
SEED = 0
N_VAL = 360


def build() -> dict[str, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    labels = digits.target.astype(np.int64)
    x_tr, x_val, y_tr, y_val = train_test_split(
        images, labels, test_size=N_VAL, stratify=labels, random_state=SEED, shuffle=True
    )
    return {
        "train_images": torch.from_numpy(np.ascontiguousarray(x_tr)),
        "train_labels": torch.from_numpy(np.ascontiguousarray(y_tr)),
        "val_images": torch.from_numpy(np.ascontiguousarray(x_val)),
        "val_labels": torch.from_numpy(np.ascontiguousarray(y_val)),
    }


def write_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write to a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates the file private (0600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "digits.safetensors")
    args = parser.parse_args()
    tensors = build()
    # one metadata entry: safetensors writes several in random order, and the file should be
    # byte-for-byte reproducible
    meta = {
        "description": "sklearn.datasets.load_digits; pixel / 16 as float32 (N, 1, 8, 8); split: "
        f"train_test_split(test_size={N_VAL}, stratify=labels, random_state={SEED})",
    }
    write_atomic(tensors, args.out, meta)
    for k, v in tensors.items():
        print(f"{k:13s} {tuple(v.shape)} {v.dtype}")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
