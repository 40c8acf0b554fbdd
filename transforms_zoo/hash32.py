"""The 32-bit hash under every draw of :class:`transforms_zoo.SampleRNG` (Wellons' ``lowbias32``):
on int32 tensors of 32-bit words (two's-complement wrap-around for the products, masked shifts
for the logical ones), on numpy's uint32 arrays (where CPU tensors draw: a small integer op costs
about a microsecond there instead of torch's several), and on Python ints (seeds, stream names);
the conversions between words and their unsigned values; the row sort of random permutations;
and the draw kernels, which :func:`transforms_zoo.fused.fused_draws` runs compiled.
"""

from __future__ import annotations

from typing import Any

import torch


def _numpy() -> Any:
    """numpy when it can view CPU tensors (zero-copy): on CPU the hash and the row sort run there,
    where a small integer op costs about a microsecond instead of torch's several. The results are
    the same bits as the torch path, which serves CUDA and builds without numpy."""
    try:
        import numpy

        torch.zeros(1, dtype=torch.int32).numpy()
    except Exception:  # no numpy, or a torch built without it
        return None
    return numpy


_np = _numpy()


#: Above this many elements torch's multi-threaded kernels beat numpy's single thread.
_NUMPY_MAX_ELEMENTS = 1 << 20


def _numpy_view(x: torch.Tensor) -> Any:
    """A numpy array sharing ``x``'s memory when the numpy path applies: a CPU tensor, not 0-d,
    contiguous (so in-place writes cannot overlap), at most :data:`_NUMPY_MAX_ELEMENTS`
    elements, outside ``torch.compile`` tracing (which would trace numpy calls as torch ones),
    and writable where torch would allow it (an inference tensor only in inference mode).
    None otherwise, and the torch path runs."""
    if (
        _np is None
        or x.device.type != "cpu"
        or x.dim() == 0
        or x.numel() > _NUMPY_MAX_ELEMENTS
        or not x.is_contiguous()
        or (x.is_inference() and not torch.is_inference_mode_enabled())
        or torch.compiler.is_compiling()
    ):
        return None
    try:
        return x.numpy()
    except (RuntimeError, TypeError):
        return None


_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


def _s32(v: int) -> int:
    """The int32 value with the bit pattern of the 32-bit word ``v``."""
    v &= _M32
    return v - (1 << 32) if v >= 1 << 31 else v


_C1 = _s32(0x7FEB352D)
_C2 = _s32(0x846CA68B)


def _mix32_(x: torch.Tensor) -> torch.Tensor:
    """Bijective 32-bit hash (lowbias32) in place on an int32 tensor of 32-bit words (one
    scratch tensor for the shifted copies)."""
    view = _numpy_view(x)
    if view is not None:
        _mix32_numpy_(view.view(_np.uint32))
        return x
    t = torch.bitwise_right_shift(x, 16)
    x.bitwise_xor_(t.bitwise_and_(0xFFFF))
    x.mul_(_C1)
    x.bitwise_xor_(torch.bitwise_right_shift(x, 15, out=t).bitwise_and_(0x1FFFF))
    x.mul_(_C2)
    x.bitwise_xor_(torch.bitwise_right_shift(x, 16, out=t).bitwise_and_(0xFFFF))
    return x


def _mix32_numpy_(x: Any) -> None:
    """:func:`_mix32_` on a numpy uint32 array (wrap-around products, logical shifts)."""
    t = x >> 16
    x ^= t
    x *= _np.uint32(0x7FEB352D)
    _np.right_shift(x, 15, out=t)
    x ^= t
    x *= _np.uint32(0x846CA68B)
    _np.right_shift(x, 16, out=t)
    x ^= t


def _stable_argsort_rows(w: torch.Tensor) -> torch.Tensor:
    """``torch.sort(w, dim=1, stable=True).indices`` of an int32 ``(n, k)`` tensor. On CPU each
    value is packed with its position below it into one int64 (so the keys are distinct and their
    order is the stable order) and numpy sorts the values alone, about 5x faster than torch's row
    sort; the positions are the low bits of the sorted keys."""
    k = w.shape[1]
    view = _numpy_view(w) if k >= 2 else None
    if view is None:
        return torch.sort(w, dim=1, stable=True).indices
    bits = (k - 1).bit_length()
    keys = view.astype(_np.int64)
    keys <<= bits
    keys |= _np.arange(k, dtype=_np.int64)
    keys.sort(axis=1)
    keys &= (1 << bits) - 1
    return torch.from_numpy(keys)


def _to_word(x: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2**32) as int32 words (exact: no out-of-range conversion)."""
    return (x - ((x >> 31) << 32)).to(torch.int32)


def _to_unsigned(w: torch.Tensor) -> torch.Tensor:
    """int32 words as int64 values in [0, 2**32)."""
    return w.to(torch.int64).bitwise_and_(_M32)


def _hashed_words(key: torch.Tensor, pos_key: torch.Tensor) -> torch.Tensor:
    """The words of a draw: ``lowbias32(key[i] + pos_key[p])``, shape ``(n, count)`` (int32)."""
    return _mix32_(key[:, None] + pos_key[None, :])


def _hashed_bits(key: torch.Tensor, pos_key: torch.Tensor) -> torch.Tensor:
    """The words of a draw as int64 values in [0, 2**32)."""
    return _to_unsigned(_hashed_words(key, pos_key))


def _top_bits(w: torch.Tensor, n_bits: int) -> torch.Tensor:
    """The top ``n_bits`` (< 32) of int32 words, as non-negative int32 (in place)."""
    w >>= 32 - n_bits
    return w.bitwise_and_((1 << n_bits) - 1)


def _hashed_uniform24(key: torch.Tensor, pos_key: torch.Tensor) -> torch.Tensor:
    """A float32 uniform draw: the top 24 bits of each word over 2**24 (exact)."""
    return _top_bits(_hashed_words(key, pos_key), 24).to(torch.float32).mul_(1.0 / 16777216.0)


def _hashed_uniform53(key: torch.Tensor, pos_a: torch.Tensor, pos_b: torch.Tensor) -> torch.Tensor:
    """A float64 uniform draw: 27 top bits of one word and 26 of another over 2**53 (exact)."""
    a = _top_bits(_hashed_words(key, pos_a), 27)
    b = _top_bits(_hashed_words(key, pos_b), 26)
    return a.to(torch.float64).mul_(67108864.0).add_(b).mul_(1.0 / 9007199254740992.0)


def _index_keys(index: torch.Tensor, seed_word: int) -> torch.Tensor:
    """The per-sample keys of indices below 2**31: ``lowbias32(index ^ seed word)`` (int32)."""
    return _mix32_(index.to(torch.int32).bitwise_xor_(seed_word))


def _probe_keys(shape: tuple[int, ...], device: torch.device, salts: int = 1) -> tuple[torch.Tensor, ...]:
    """Sample keys and ``salts`` sets of position keys of a ``(rows, columns)`` draw: words of
    every sign and bit, for checking a fused kernel."""
    rows = torch.arange(shape[0], dtype=torch.int64, device=device) * 0x9E3779B1 + 0x7F4A7C15
    cols = torch.arange(shape[1], dtype=torch.int64, device=device)
    words = [rows] + [cols * (0x85EBCA77 + 2 * k) + 0x165667B1 for k in range(salts)]
    return tuple(_to_word(v & _M32) for v in words)


def _probe_index(shape: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, int]:
    """Sample indices and a seed word for checking the fused :func:`_index_keys`."""
    return torch.arange(2**31 - 7 * shape[0], 2**31, 7, dtype=torch.int64, device=device), _s32(0xC2B2AE35)


def _mix_int(x: int) -> int:
    """The same hash on a Python int (for seeds and stream names)."""
    x &= _M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    x ^= x >> 16
    return x
