"""The C allocator of an ``eqaudit`` process: on Linux with glibc, blocks up to 32 MiB come from
the heap and freed memory stays with the process, so each forward pass's activations are not
mapped afresh and page-faulted in on every model call.

glibc maps blocks above an adaptive threshold (128 KiB at start) with ``mmap`` and unmaps them on
free; a CPU audit allocates and frees the same activation sizes thousands of times, so by
default much of its time goes to zeroing fresh pages. The first audit in a process suffered
most: the benchmark CNN's audit took 3.9-5.3 s in a fresh process against 2.8-3.3 s with these
settings (``benchmarks/README.md``). The console script applies them at start
(:func:`steady_allocator`); the library leaves the caller's process as it is (set
``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824`` to get the same).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

#: glibc's ``mallopt`` parameters.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: glibc's ceiling for the mmap threshold on 64-bit systems.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30
#: Set (to anything) to keep glibc's defaults.
OPT_OUT = "EQAUDIT_DEFAULT_MALLOC"
#: The user's own malloc settings, which win.
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")


def steady_allocator(environ: Mapping[str, str] | None = None, *, force: bool = False) -> bool:
    """Tell glibc to serve blocks up to :data:`MMAP_THRESHOLD` from its heap and to keep up to
    :data:`TRIM_THRESHOLD` of freed memory; True when it took. Skipped (False) off Linux, without
    glibc, when :data:`OPT_OUT` is set or when the user set glibc's own malloc variables
    (``force``: regardless of the environment, for the benchmark)."""
    env = os.environ if environ is None else environ
    if not sys.platform.startswith("linux"):
        return False
    if not force and (env.get(OPT_OUT) or any(key in env for key in USER_SETTINGS)):
        return False
    try:
        import ctypes

        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
