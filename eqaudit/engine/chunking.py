"""How many samples the engine processes per chunk, and how many rows go into one model call,
when ``--batch-size`` is not given.

A chunk is the unit of drawing, transforming and folding into the statistics: the larger, the
fewer small tensor operations per sample. On a GPU it is as large as free device memory allows
(:func:`device_chunk`: a fraction of the free bytes over the bytes a sample holds, measured by
the probe; backed off on out-of-memory by the engine), and each forward pass takes a whole chunk:
every chunk costs a fixed number of kernel launches, so fewer chunks keep the GPU busy.

On a CPU the forward passes run fastest when a layer's input and output stay in the processor's
cache: a single batch of 16384 small images is slower than 64 batches of 256. So there the
chunk's inputs are forwarded in calls of at most :func:`forward_rows` rows, bounded by the
model's largest per-row layer working set (input plus output of one leaf module), measured once
by a probe forward of one block of points with forward hooks. Per-layer errors (``layers:``)
record each check's rows in one call, so with them the chunk itself is bounded instead.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from .estimator import BLOCK

#: Input elements per forward pass.
CPU_ELEMENTS = 1 << 18
GPU_ELEMENTS = 1 << 22
#: Largest chunk in samples (keeps memory flat in the sample count).
MAX_CHUNK = 1 << 12
#: Largest chunk on a GPU sized by free memory (:func:`device_chunk`): memory stays flat in the
#: sample count above it, and a 65536-sample audit of a small model is one chunk.
DEVICE_MAX_CHUNK = 1 << 16
#: The share of free device memory a chunk may hold: the rest is left to the distances'
#: temporaries, the allocator's rounding and other users of the device.
DEVICE_MEMORY_FRACTION = 0.25
#: Bytes a CPU chunk may hold: its points, every transformed copy, their outputs and the
#: float64 copies the distances compare (see :func:`held_bytes`).
CPU_CHUNK_BYTES = 64 << 20
#: Bytes one layer (input plus output, over one model call) may touch on CPU: a fraction of a
#: server processor's last-level cache. On the 2-core benchmark machine (32 MiB L3), 4 MiB ran
#: the benchmark MLP's audit at 0.83 of the ideal's time against 0.88-0.89 for 2, 8 and 16 MiB.
CPU_WORKING_SET = 4 << 20


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
    count. On CPU it is the power of two nearest to the input budget: such chunks split
    power-of-two sample counts evenly, so every chunk allocates the same sizes and the allocator
    reuses its blocks instead of faulting in fresh pages (an uneven last chunk roughly quadrupled
    the page faults of the benchmark MLP's audit). ``layer_bytes`` (see
    :func:`probe`) and ``copies`` (transformed copies of each sample forwarded
    together) bound it further, to the power of two nearest to keeping one layer of a fused
    forward of the whole chunk within :data:`CPU_WORKING_SET`: for audits whose checks must each
    go through one model call."""
    if device.type == "cuda":
        size = max(BLOCK, min(MAX_CHUNK, GPU_ELEMENTS // max(1, sample_numel)))
    else:
        size = max(BLOCK, min(MAX_CHUNK, nearest_power_of_two(CPU_ELEMENTS / max(1, sample_numel))))
    if device.type == "cpu" and layer_bytes:
        size = min(size, nearest_power_of_two(CPU_WORKING_SET / (layer_bytes * max(1, copies))))
    size = min(size, round_up(n_samples, BLOCK))
    return max(BLOCK, (size // BLOCK) * BLOCK)


def held_bytes(input_bytes: int, output_bytes: int, copies: int) -> int:
    """Bytes a chunk holds per sample: the point and each of its ``copies`` transformed copies,
    with their outputs, the output-transformed base output and the float64 pair the distances
    compare (four output sizes of float32 per copy besides its own)."""
    return (1 + copies) * input_bytes + (1 + 5 * copies) * output_bytes


def device_chunk(free_bytes: int, sample_bytes: int, n_samples: int, copies: int) -> int:
    """Samples per chunk on a GPU: the largest power of two whose chunk holds at most
    :data:`DEVICE_MEMORY_FRACTION` of ``free_bytes``, each sample holding ``sample_bytes`` (see
    :meth:`Probe.device_bytes`) for itself and for each of its ``copies`` transformed copies;
    at most :data:`DEVICE_MAX_CHUNK`, never far above ``n_samples``, at least one block."""
    per_sample = max(1, sample_bytes) * (1 + max(1, copies))
    size = min(DEVICE_MAX_CHUNK, largest_power_of_two(free_bytes * DEVICE_MEMORY_FRACTION / per_sample))
    size = min(size, round_up(n_samples, BLOCK))
    return max(BLOCK, (size // BLOCK) * BLOCK)


def free_device_bytes(device: torch.device) -> int | None:
    """Free bytes on a CUDA ``device`` (None elsewhere, or when the driver cannot say)."""
    if device.type != "cuda":
        return None
    try:
        free, _total = torch.cuda.mem_get_info(device)
    except (RuntimeError, AssertionError):
        return None
    return int(free)


def largest_power_of_two(x: float) -> int:
    """The largest power of two not above ``x`` (1 below 2)."""
    return 1 << max(0, math.floor(math.log2(max(x, 1.0))))


def bounded_chunk(chunk: int, device: torch.device, held: int | None, world_size: int, n_samples: int) -> int:
    """``chunk`` lowered, on CPU, so that a chunk holds at most :data:`CPU_CHUNK_BYTES` (``held``
    bytes per sample, see :func:`held_bytes`; None: unknown) and, on any device, so that each of
    ``world_size`` processes gets a chunk to work on. Every process computes the same value.
    Lowered sizes are powers of two, at least one statistics block."""
    size = chunk
    if device.type == "cpu" and held:
        size = min(size, largest_power_of_two(CPU_CHUNK_BYTES / held))
    if world_size > 1:
        size = min(size, largest_power_of_two(max(BLOCK, -(-n_samples // world_size))))
    return max(BLOCK, (size // BLOCK) * BLOCK)


def forward_rows(layer_bytes: int | None, device: torch.device) -> int | None:
    """Rows per model call on CPU: the power of two nearest to :data:`CPU_WORKING_SET` over the
    largest per-row layer working set (see :func:`probe`), at least one statistics
    block; None (a whole chunk per call) on other devices or without a probe."""
    if device.type != "cpu" or not layer_bytes:
        return None
    return max(BLOCK, nearest_power_of_two(CPU_WORKING_SET / layer_bytes))


class Probe(NamedTuple):
    """What one probe forward measured, per sample (bytes)."""

    layer: int  #: the largest input + output of one leaf module
    input: int  #: the model's input
    output: int  #: the model's output

    def held(self, copies: int) -> int:
        """Bytes a chunk holds per sample (see :func:`held_bytes`)."""
        return held_bytes(self.input, self.output, copies)

    def device_bytes(self) -> int:
        """Bytes one sample or one transformed copy holds at most in a chunk on a GPU, where a
        forward pass takes the whole chunk: its input, the widest layer's input and output, and
        its output with the copies the distances compare (see :func:`held_bytes`)."""
        return self.input + self.layer + 5 * self.output


#: Probes already taken, per model (a weak key: a model that goes away takes its entries along):
#: audits repeated on one model (a training monitor, a benchmark) probe it once. Keyed by the
#: input's per-sample shape, dtype and device and the model's parameter count and size, so a
#: changed model is probed again; a stale entry could only change the chunk size, which never
#: changes results.
_PROBES: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], Probe]] = weakref.WeakKeyDictionary()


def probe(model: Any, x: torch.Tensor) -> Probe | None:
    """Forward ``x`` (a batch) with hooks on the leaf modules and measure, per sample, the largest
    ``input + output`` bytes of one leaf module and the model's output bytes; None when ``model``
    is not a module or the probe fails (the engine then reports the failure on its own forward).
    Remembered per model and input layout (see :data:`_PROBES`)."""
    if not isinstance(model, torch.nn.Module) or x.shape[0] == 0:
        return None
    key = _probe_key(model, x.shape[1:], x.dtype, x.device)
    known = _PROBES.get(model, {}).get(key)
    if known is not None:
        return known
    measured = _measure(model, x)
    if measured is not None:
        _PROBES.setdefault(model, {})[key] = measured
    return measured


def remembered_probe(model: Any, sample_shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Probe | None:
    """The probe :func:`probe` took of ``model`` on samples of this shape, dtype and device, if
    any (so the caller need not draw the probe's points)."""
    if not isinstance(model, torch.nn.Module):
        return None
    return _PROBES.get(model, {}).get(_probe_key(model, sample_shape, dtype, device))


def _probe_key(model: torch.nn.Module, sample_shape: Sequence[int], dtype: torch.dtype,
               device: torch.device) -> tuple[Any, ...]:
    params = list(model.parameters())
    return (tuple(sample_shape), dtype, str(torch.device(device)), len(params), sum(p.numel() for p in params))


def _measure(model: torch.nn.Module, x: torch.Tensor) -> Probe | None:
    """The hooked forward of :func:`probe`."""
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
        y = model(x)
    except Exception:
        return None
    finally:
        for h in handles:
            h.remove()
    if worst == 0:  # no leaf modules (a bare function wrapped as a module): the input alone
        worst = _tensor_bytes(x)
    n = x.shape[0]
    return Probe(*(max(1, math.ceil(b / n)) for b in (worst, _tensor_bytes(x), _tensor_bytes(y))))


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(_tensor_bytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(_tensor_bytes(o) for o in obj.values())
    return 0
