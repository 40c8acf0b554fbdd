"""Fused draws: the keyed hash of a draw as one compiled kernel (opt-in).

Eagerly, a draw of :class:`transforms_zoo.SampleRNG` is about a dozen elementwise integer
operations (the lowbias32 rounds with their masked shifts, the conversion of a uniform draw),
each a kernel launch on a GPU. Inside :func:`fused_draws` the draws that have a kernel here run
it as one kernel compiled by ``torch.compile`` instead. The kernels are integer arithmetic and
one exact conversion, so they give the eager path's bits; each is compared with the eager path
on its device before its first use, and a kernel that does not compile or disagrees is left out
with a warning (the eager path runs, with the same numbers).

The first use compiles (seconds, once per process and kernel; torch caches the code on disk),
so this pays where draws are many: large or repeated audits on a GPU (``eqaudit measure
--compile``).
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

__all__ = ["fused_draws", "fused_kernel", "fused_draws_enabled"]

_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("transforms_zoo_fused_draws", default=False)

#: Per kernel (the eager function), its compiled form.
_COMPILED: dict[Callable[..., torch.Tensor], Callable[..., torch.Tensor]] = {}
#: Per (kernel, device, class of shape), whether the compiled form gave the eager bits.
_VERDICTS: dict[tuple[Callable[..., torch.Tensor], str, tuple[int, ...]], bool] = {}

#: The probe inputs' size along a dimension above 1 (rows, columns).
PROBE_SIZES = (5, 3)


@contextlib.contextmanager
def fused_draws(enabled: bool = True) -> Iterator[None]:
    """Within the block, draws run their hash as one compiled kernel each (see the module)."""
    token = _ENABLED.set(bool(enabled))
    try:
        yield
    finally:
        _ENABLED.reset(token)


def fused_draws_enabled() -> bool:
    """Whether the caller is inside :func:`fused_draws`."""
    return _ENABLED.get()


Kernel = Callable[..., torch.Tensor]


def fused_kernel(kernel: Kernel, device: torch.device, shape: Sequence[int],
                 probe_args: Callable[[tuple[int, ...], torch.device], Sequence[Any]]) -> Kernel | None:
    """The compiled form of ``kernel`` for a draw of ``shape`` (samples first) on ``device``, or
    None where the eager path must run: outside :func:`fused_draws`, while ``torch.compile``
    traces (the caller's graph takes the eager code in), under a dispatch mode (which sees eager
    operators only), for an empty draw, or when the compiled form failed or disagreed with
    ``kernel`` on ``probe_args(probe_shape, device)`` for the same class of shape
    (torch.compile specialises a dimension of size 1, so each class is its own code, checked on
    its first use)."""
    if not _ENABLED.get() or 0 in shape or torch.compiler.is_compiling() or _dispatch_mode_active():
        return None
    shape_class = tuple(1 if d == 1 else PROBE_SIZES[i % len(PROBE_SIZES)] for i, d in enumerate(shape))
    verdict_key = (kernel, str(device), shape_class)
    ok = _VERDICTS.get(verdict_key)
    if ok is None:
        ok = _VERDICTS[verdict_key] = _verified(kernel, device, probe_args(shape_class, device))
    return _COMPILED[kernel] if ok else None


def _dispatch_mode_active() -> bool:
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    return _get_current_dispatch_mode() is not None


def _verified(kernel: Callable[..., torch.Tensor], device: torch.device, args: Sequence[Any]) -> bool:
    """Compile ``kernel`` (once per process) and compare it with the eager code on ``args``."""
    name = getattr(kernel, "__name__", "kernel")
    try:
        with warnings.catch_warnings():  # torch's compiler stack warns about its own deprecated parts
            warnings.simplefilter("ignore", DeprecationWarning)
            compiled = _COMPILED.get(kernel)
            if compiled is None:
                compiled = _COMPILED[kernel] = torch.compile(kernel, dynamic=True)
            want, got = kernel(*args), compiled(*args)
    except Exception as exc:  # no C++ compiler, no Triton, an unsupported device...
        text = str(exc).strip()
        reason = text.splitlines()[0] if text else type(exc).__name__
        warnings.warn(f"transforms_zoo: the fused draw kernel {name} does not compile on {device} ({reason}); "
                      "draws there stay eager (same numbers)", RuntimeWarning, stacklevel=4)
        return False
    if got.dtype != want.dtype or got.shape != want.shape or not torch.equal(got, want):
        warnings.warn(f"transforms_zoo: the fused draw kernel {name} disagrees with the eager path on {device}; "
                      "draws there stay eager (same numbers)", RuntimeWarning, stacklevel=4)
        return False
    return True


def forget_verdicts() -> None:
    """Drop the compiled kernels and their verdicts (tests; a changed torch configuration)."""
    _COMPILED.clear()
    _VERDICTS.clear()
