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
    """Bijective 32-bit integer hash of an int64 tensor holding values in [0, 2**32)."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    x = x ^ (x >> 16)
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


_POSITION_KEYS: dict[tuple[int, int, str], torch.Tensor] = {}


def _position_keys(count: int, salt: int, device: torch.device) -> torch.Tensor:
    """Hashed element positions, cached: the same for every chunk, so computed once."""
    k = (count, salt, str(device))
    keys = _POSITION_KEYS.get(k)
    if keys is None:
        if len(_POSITION_KEYS) > 256:
            _POSITION_KEYS.clear()
        pos = torch.arange(count, dtype=torch.int64, device=device)
        with torch.inference_mode(False), torch.no_grad():
            keys = _mix32(pos * 2 + salt + _GOLDEN)
        _POSITION_KEYS[k] = keys
    return keys


class SampleRNG:
    """Random numbers for a batch of samples, each row determined by its sample index alone.

    ``rng.uniform(3, 4)`` returns a tensor of shape ``(n, 3, 4)`` whose row ``r`` depends only on
    ``(seed, stream, index[r])``. ``child(tag)`` derives an independent stream, so one transform
    can draw several parameters without correlating them.
    """

    def __init__(self, seed: int, index: torch.Tensor, stream: int = 0) -> None:
        if index.dtype != torch.int64 or index.dim() != 1:
            raise TypeError("index must be a 1-D int64 tensor of sample indices")
        self.seed = int(seed)
        self.index = index
        self.stream = int(stream) & _M32
        s = _mix_int(_mix_int(self.seed & _M32) ^ _mix_int((self.seed >> 32) + _GOLDEN) ^ self.stream)
        # Per-sample key: a function of (seed, stream, i) only. Indices above 2**32 fold in their
        # high word through a second round.
        lo = index & _M32
        hi = (index >> 32) & _M32
        self._key = _mix32(_mix32(lo ^ s) + _mix32(hi + _GOLDEN))

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def for_range(
        cls, seed: int, start: int, stop: int, device: torch.device | str = "cpu", stream: int = 0
    ) -> SampleRNG:
        """Draws for the samples ``start, ..., stop - 1``."""
        index = torch.arange(start, stop, dtype=torch.int64, device=device)
        return cls(seed, index, stream)

    @classmethod
    def from_torch(cls, n: int, device: torch.device | str = "cpu") -> SampleRNG:
        """A fresh draw seeded from torch's global generator (so ``torch.manual_seed`` governs it)."""
        seed = int(torch.randint(0, 2**62, (1,), dtype=torch.int64).item())
        return cls.for_range(seed, 0, n, device)

    def child(self, tag: str | int) -> SampleRNG:
        """An independent stream for the same samples."""
        new = object.__new__(SampleRNG)
        new.seed = self.seed
        new.index = self.index
        new.stream = _mix_int(self.stream ^ stream_id(tag))
        new._key = _mix32(self._key ^ new.stream)
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
        """32 random bits (as int64 in [0, 2**32)) for each sample and each element of ``shape``."""
        count = math.prod(shape)
        pos_key = _position_keys(count, salt, self.device)
        # One round suffices: both the sample key and the position key are already hashed.
        h = _mix32(self._key[:, None] + pos_key[None, :])
        return h.reshape(self.n, *shape)

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
            u = (a.to(torch.float64) * 67108864.0 + b.to(torch.float64)) * (1.0 / 9007199254740992.0)
        else:
            u = (self._bits(shape) >> 8).to(torch.float32) * (1.0 / 16777216.0)
            u = u.to(dtype)
        if isinstance(low, (int, float)) and isinstance(high, (int, float)) and (low, high) == (0.0, 1.0):
            return u
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
        return low + ((bits * span) >> 32)

    def permutation(self, k: int) -> torch.Tensor:
        """A uniformly random permutation of ``range(k)`` per sample, shape ``(n, k)``."""
        keys = self._bits((k,), 3) * 64 + torch.arange(k, device=self.device)  # ties impossible
        return torch.argsort(keys, dim=1)

    def choice(self, k: int, of: int) -> torch.Tensor:
        """``k`` distinct indices from ``range(of)`` per sample, shape ``(n, k)``."""
        return self.permutation(of)[:, :k]
