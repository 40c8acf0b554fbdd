"""How many samples the engine processes per chunk when ``--batch-size`` is not given.

On a GPU: as many as a large input budget allows (backed off on out-of-memory by the engine). On
a CPU the forward passes run fastest when a layer's input and output stay in the processor's
cache: a single batch of 16384 small images is slower than 64 batches of 256. So on CPU the chunk
is also bounded by the model's largest per-sample layer working set (input plus output of one
leaf module), measured once by a probe forward of one block of points with forward hooks.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .estimator import BLOCK

#: Input elements per forward pass.
CPU_ELEMENTS = 1 << 18
GPU_ELEMENTS = 1 << 22
#: Largest chunk in samples (keeps memory flat in the sample count).
MAX_CHUNK = 1 << 12
#: Bytes one layer (input plus output, over the whole fused batch) may touch on CPU: about
#: half of a server processor's last-level cache.
CPU_WORKING_SET = 8 << 20


def round_up(n: int, k: int) -> int:
    return ((n + k - 1) // k) * k


def nearest_power_of_two(x: float) -> int:
    """The power of two nearest to ``x`` on a log scale (within a factor of sqrt(2))."""
    return 1 << max(0, round(math.log2(max(x, 1.0))))


def auto_batch_size(
    sample_numel: int,
    device: torch.device,
    n_samples: int,
    *,
    layer_bytes: int | None = None,
    copies: int = 1,
) -> int:
    """A chunk size in samples: a multiple of the statistics block, never far above the sample
    count. ``layer_bytes`` is the largest per-sample layer working set (see
    :func:`layer_working_set`) and ``copies`` the number of transformed copies of each sample
    forwarded together (one per check or group element); on CPU they bound the chunk so that one
    layer of the fused forward fits :data:`CPU_WORKING_SET`, to the nearest power of two: such
    chunks split power-of-two sample counts evenly, so every chunk allocates the same sizes and
    the allocator reuses its blocks instead of faulting in fresh pages (an uneven last chunk
    roughly quadrupled the page faults of the benchmark MLP's audit)."""
    budget = GPU_ELEMENTS if device.type == "cuda" else CPU_ELEMENTS
    size = max(BLOCK, min(MAX_CHUNK, budget // max(1, sample_numel)))
    if device.type == "cpu" and layer_bytes:
        size = min(size, nearest_power_of_two(CPU_WORKING_SET / (layer_bytes * max(1, copies))))
    size = min(size, round_up(n_samples, BLOCK))
    return max(BLOCK, (size // BLOCK) * BLOCK)


def layer_working_set(model: Any, x: torch.Tensor) -> int | None:
    """The largest ``input + output`` bytes of one leaf module, per sample, for a forward of
    ``x`` (a batch); None when ``model`` is not a module or the probe fails (the engine then
    reports the failure on its own forward)."""
    if not isinstance(model, torch.nn.Module) or x.shape[0] == 0:
        return None
    worst = 0

    def hook(_module: Any, args: tuple[Any, ...], out: Any) -> None:
        nonlocal worst
        size = _tensor_bytes(args) + _tensor_bytes(out)
        worst = max(worst, size)

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = []
    try:
        for m in leaves:  # inside the try: scripted modules refuse hooks
            handles.append(m.register_forward_hook(hook))
        model(x)
    except Exception:
        return None
    finally:
        for h in handles:
            h.remove()
    if worst == 0:  # no leaf modules (a bare function wrapped as a module): the input alone
        worst = _tensor_bytes(x)
    return max(1, math.ceil(worst / x.shape[0]))


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(_tensor_bytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(_tensor_bytes(o) for o in obj.values())
    return 0
