"""Train the bundled sample model: ``SmallCNN(channels=16)`` on ``digits.safetensors``.

Deterministic (fixed seed, one CPU thread): Adam, plain cross-entropy, random circular shifts of
up to one pixel in x and y as the only augmentation. There is deliberately no rotation or flip
augmentation, so the trained model is accurate but measurably NOT invariant to rot90 / flips:
that is what ``eqaudit measure`` reports and ``eqaudit finetune`` improves.

    python sample_configs/make_digits_data.py     # once, if digits.safetensors is missing
    python sample_configs/train_digits.py         # writes sample_configs/digits_cnn.safetensors

Takes a few seconds on a laptop CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from sample_models.digits import SmallCNN  # noqa: E402

SEED = 0
CHANNELS = 16


def random_shift(x: torch.Tensor, gen: torch.Generator, max_px: int = 1) -> torch.Tensor:
    """Roll each image circularly by its own random (dy, dx) in [-max_px, max_px]."""
    shifts = torch.randint(-max_px, max_px + 1, (x.shape[0], 2), generator=gen)
    out = x.clone()
    for dy in range(-max_px, max_px + 1):
        for dx in range(-max_px, max_px + 1):
            rows = ((shifts[:, 0] == dy) & (shifts[:, 1] == dx)).nonzero().flatten()
            if rows.numel() and (dy or dx):
                out[rows] = torch.roll(x[rows], shifts=(dy, dx), dims=(-2, -1))
    return out


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model(x).argmax(dim=1) == y).float().mean().item()


def train(data: dict[str, torch.Tensor], *, epochs: int, batch_size: int, lr: float, shift: int) -> SmallCNN:
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    model = SmallCNN(channels=CHANNELS)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    x, y = data["train_images"], data["train_labels"]
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(x.shape[0], generator=gen)
        total = 0.0
        for start in range(0, x.shape[0], batch_size):
            idx = order[start : start + batch_size]
            xb = random_shift(x[idx], gen, shift) if shift else x[idx]
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * idx.numel()
        sched.step()
        if (epoch + 1) % 5 == 0 or epoch == epochs - 1:
            val = accuracy(model, data["val_images"], data["val_labels"])
            print(f"epoch {epoch + 1:3d}  loss {total / x.shape[0]:.4f}  val acc {val:.4f}")
    return model.eval()


def write_atomic(model: torch.nn.Module, path: Path) -> None:
    """save_file(state_dict) to a temporary file beside ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, tmp, metadata={"description": f"sample_models.digits:SmallCNN(channels={CHANNELS})"})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates the file private (0600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE / "digits.safetensors")
    parser.add_argument("--out", type=Path, default=HERE / "digits_cnn.safetensors")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--shift", type=int, default=1, help="max circular shift augmentation in px (0: none)")
    args = parser.parse_args()

    torch.set_num_threads(1)  # bit-for-bit reproducible on a given machine
    if not args.data.exists():
        sys.exit(f"{args.data} not found: run make_digits_data.py first")
    data = load_file(str(args.data))
    t0 = time.perf_counter()
    model = train(data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, shift=args.shift)
    val = accuracy(model, data["val_images"], data["val_labels"])
    write_atomic(model, args.out)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"val accuracy {val:.4f} ({round(val * data['val_labels'].numel())}/{data['val_labels'].numel()}); "
          f"{n_params} parameters; trained in {time.perf_counter() - t0:.1f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
