"""Counter-based random numbers keyed by (seed, stream, sample index).

Every draw for sample ``i`` is a pure function of ``(seed, stream, i)`` and the element position:
it does not depend on how samples are split into chunks, on the order of calls, or on the device
(CPU and CUDA give the same numbers). The generator is a vectorised integer hash (Wellons'
``lowbias32``) evaluated with int64 tensor ops, so draws happen on the data's device.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import torch

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """Bijective 32-bit integer hash of an int64 tensor holding values in [0, 2**32).

    Works in place on one fresh tensor (the first mask), so a hash costs one allocation."""
    x = x & _M32
    return _mix32_(x)


def _mix32_(x: torch.Tensor) -> torch.Tensor:
    """:func:`_mix32` in place on ``x`` (int64, values in [0, 2**32))."""
    x.bitwise_xor_(x >> 16)
    x.mul_(0x7FEB352D).bitwise_and_(_M32)
    x.bitwise_xor_(x >> 15)
    x.mul_(0x846CA68B).bitwise_and_(_M32)
    x.bitwise_xor_(x >> 16)
    return x


def _mix_int(x: int) -> int:
    """The same hash on a Python int (for seeds and stream names)."""
    x &= _M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    x ^= x >> 16
    return x


def stream_id(tag: str | int) -> int:
    """A stable 32-bit id for a stream name (independent of Python's hash seed)."""
    if isinstance(tag, int):
        return _mix_int(tag + _GOLDEN)
    return zlib.crc32(tag.encode("utf-8")) & _M32


_POSITION_KEYS: dict[tuple[int, int, int, str], torch.Tensor] = {}
_POSITION_KEY_ELEMENTS = 1 << 23  # cache bound: 64 MiB of int64 keys per device type
_SALTS = 8  # distinct draw kinds per stream (uniform words, integers, permutations, keys, ...)


def _position_keys(count: int, salt: int, stream: int, device: torch.device) -> torch.Tensor:
    """Hashed (stream, draw kind, element position) keys, cached: the same for every chunk, so
    a stream costs no tensor work until it draws, and a draw costs one hash round."""
    k = (count, salt, stream, str(device))
    keys = _POSITION_KEYS.get(k)
    if keys is None:
        if sum(t.numel() for t in _POSITION_KEYS.values()) + count > _POSITION_KEY_ELEMENTS:
            _POSITION_KEYS.clear()
        pos = torch.arange(count, dtype=torch.int64, device=device)
        with torch.inference_mode(False), torch.no_grad():
            keys = _mix32_(_mix32(pos * _SALTS + (salt + _GOLDEN)) ^ _mix_int(stream ^ _STREAM_SALT))
        _POSITION_KEYS[k] = keys
    return keys


_STREAM_SALT = 0x85EBCA6B
_HI_ZERO = _mix_int(_GOLDEN)  # the hashed high word of every index below 2**32


def _seed_word(seed: int) -> int:
    return _mix_int(_mix_int(seed & _M32) ^ _mix_int((seed >> 32) + _GOLDEN))


class SampleRNG:
    """Random numbers for a batch of samples, each row determined by its sample index alone.

    ``rng.uniform(3, 4)`` returns a tensor of shape ``(n, 3, 4)`` whose row ``r`` depends only on
    ``(seed, stream, index[r])``. ``child(tag)`` derives an independent stream, so one transform
    can draw several parameters without correlating them.

    Each sample has one hashed key (a function of seed and index); a stream is a 32-bit number
    folded into the cached position keys, so ``child`` costs no tensor work and element ``p`` of
    a draw is ``lowbias32(key[i] + position_key[stream, kind, p])``.
    """

    def __init__(self, seed: int, index: torch.Tensor, stream: int = 0, *, below_2_32: bool = False) -> None:
        if index.dtype != torch.int64 or index.dim() != 1:
            raise TypeError("index must be a 1-D int64 tensor of sample indices")
        self.seed = int(seed)
        self.index = index
        self.stream = int(stream) & _M32
        s = _seed_word(self.seed)
        # Per-sample key: a function of (seed, i) only. Indices above 2**32 fold in their high
        # word through a second round (``below_2_32``: the caller knows there are none).
        if below_2_32:
            self._key = _mix32_(_mix32_((index ^ s).bitwise_and_(_M32)).add_(_HI_ZERO).bitwise_and_(_M32))
        else:
            hi = _mix32_((index >> 32).bitwise_and_(_M32).add_(_GOLDEN))
            self._key = _mix32_(_mix32((index & _M32) ^ s).add_(hi).bitwise_and_(_M32))

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def for_range(
        cls, seed: int, start: int, stop: int, device: torch.device | str = "cpu", stream: int = 0
    ) -> SampleRNG:
        """Draws for the samples ``start, ..., stop - 1``."""
        index = torch.arange(start, stop, dtype=torch.int64, device=device)
        return cls(seed, index, stream, below_2_32=0 <= start and stop <= 2**32)

    @classmethod
    def from_keys(cls, keys: torch.Tensor, stream: int = 0) -> SampleRNG:
        """Draws keyed by 32-bit words already random per sample (see :meth:`words`)."""
        if keys.dtype != torch.int64 or keys.dim() != 1:
            raise TypeError("keys must be a 1-D int64 tensor")
        new = object.__new__(SampleRNG)
        new.seed, new.index, new.stream = 0, keys, int(stream) & _M32
        new._key = keys & _M32
        return new

    @classmethod
    def from_torch(cls, n: int, device: torch.device | str = "cpu") -> SampleRNG:
        """A fresh draw seeded from torch's global generator (so ``torch.manual_seed`` governs it)."""
        seed = int(torch.randint(0, 2**62, (1,), dtype=torch.int64).item())
        return cls.for_range(seed, 0, n, device)

    def child(self, tag: str | int) -> SampleRNG:
        """An independent stream for the same samples."""
        new = object.__new__(SampleRNG)
        new.seed, new.index, new._key = self.seed, self.index, self._key
        new.stream = _mix_int(self.stream ^ stream_id(tag))
        return new

    def select(self, rows: torch.Tensor) -> SampleRNG:
        """The same streams restricted to some rows (a boolean mask or row positions)."""
        new = object.__new__(SampleRNG)
        new.seed, new.stream = self.seed, self.stream
        new.index = self.index[rows]
        new._key = self._key[rows]
        return new

    # -- properties ---------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return int(self.index.shape[0])

    @property
    def device(self) -> torch.device:
        return self.index.device

    def __len__(self) -> int:
        return self.n

    # -- draws --------------------------------------------------------------------------------
    def _bits(self, shape: Sequence[int], salt: int = 0) -> torch.Tensor:
        """32 random bits (as int64 in [0, 2**32)) for each sample and each element of ``shape``:
        a fresh tensor the caller may modify in place."""
        if not 0 <= salt < _SALTS:
            raise ValueError(f"salt must lie in [0, {_SALTS})")
        count = math.prod(shape)
        pos_key = _position_keys(count, salt, self.stream, self.device)
        # One round suffices: both the sample key and the position key are already hashed.
        h = _mix32_((self._key[:, None] + pos_key[None, :]).bitwise_and_(_M32))
        return h.reshape(self.n, *shape)

    def words(self) -> torch.Tensor:
        """One random 32-bit word per sample (int64, shape ``(n,)``): keys for :meth:`from_keys`."""
        return self._bits((), 4)

    def uniform(
        self,
        *shape: int,
        low: float | torch.Tensor = 0.0,
        high: float | torch.Tensor = 1.0,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Uniform numbers in ``[low, high)``, shape ``(n, *shape)``."""
        if dtype == torch.float64:
            a = self._bits(shape, 0) >> 5  # 27 bits
            b = self._bits(shape, 1) >> 6  # 26 bits
            u = a.to(torch.float64).mul_(67108864.0).add_(b).mul_(1.0 / 9007199254740992.0)
        else:
            bits = self._bits(shape)
            bits >>= 8  # 24 bits: exact in float32
            u = bits.to(torch.float32).mul_(1.0 / 16777216.0)
            if dtype != torch.float32:
                u = u.to(dtype)
        if isinstance(low, (int, float)) and isinstance(high, (int, float)):
            if (low, high) == (0.0, 1.0):
                return u
            return u.mul_(high - low).add_(low)
        return low + (high - low) * u

    def normal(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal numbers (Box-Muller), shape ``(n, *shape)``."""
        work = torch.float64 if dtype == torch.float64 else torch.float32
        u1 = self.child("normal-u1").uniform(*shape, dtype=work)
        u2 = self.child("normal-u2").uniform(*shape, dtype=work)
        r = torch.sqrt(-2.0 * torch.log1p(-u1))  # 1 - u1 lies in (0, 1]
        return (r * torch.cos(2.0 * math.pi * u2)).to(dtype)

    def integers(self, low: int, high: int, *shape: int) -> torch.Tensor:
        """Integers uniform in ``[low, high)`` (int64), shape ``(n, *shape)``."""
        span = int(high) - int(low)
        if span <= 0:
            raise ValueError(f"empty integer range [{low}, {high})")
        if span > 2**31:
            raise ValueError("integer range too large")
        bits = self._bits(shape, 2)
        # Multiply-shift maps 32 bits onto [0, span) with bias below 2**-32 * span.
        bits.mul_(span)
        bits >>= 32
        return bits.add_(low) if low else bits

    def permutation(self, k: int) -> torch.Tensor:
        """A uniformly random permutation of ``range(k)`` per sample, shape ``(n, k)``."""
        # Sorting random keys; a stable sort breaks the (rare) ties by position.
        return torch.sort(self._bits((k,), 3), dim=1, stable=True).indices

    def choice(self, k: int, of: int) -> torch.Tensor:
        """``k`` distinct indices from ``range(of)`` per sample, shape ``(n, k)``."""
        return self.permutation(of)[:, :k]
