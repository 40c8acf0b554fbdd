"""Counter-based random numbers keyed by (seed, stream, sample index).

Every draw for sample ``i`` is a pure function of ``(seed, stream, i)`` and the element position:
it does not depend on how samples are split into chunks, on the order of calls, or on the device
(CPU and CUDA give the same numbers). The generator is a vectorised integer hash
(:mod:`transforms_zoo.hash32`) evaluated on the data's device.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Sequence
from typing import Any

import torch

from transforms_zoo.fused import fused_kernel
from transforms_zoo.hash32 import (_GOLDEN, _M32, _hashed_bits, _hashed_uniform24, _hashed_uniform53, _hashed_words,
                                   _index_keys, _mix32_, _mix_int, _probe_index, _probe_keys, _s32,
                                   _stable_argsort_rows, _to_word)



def stream_id(tag: str | int) -> int:
    """A stable 32-bit id for a stream name (independent of Python's hash seed)."""
    if isinstance(tag, int):
        return _mix_int(tag + _GOLDEN)
    return zlib.crc32(tag.encode("utf-8")) & _M32


_POSITION_KEYS: dict[tuple[int, int, int, str], torch.Tensor] = {}
_POSITION_KEY_ELEMENTS = 1 << 23  # cache bound: 32 MiB of int32 words
_POSITION_KEY_ENTRIES = 256  # and at most this many (stream, kind, size) entries
_POSITION_KEY_TOTAL = 0
_STREAM_SALT = 0x85EBCA6B
_SALTS = 8  # distinct draw kinds per stream (uniform words, integers, permutations, keys, ...)


def clear_position_keys() -> None:
    """Empty the position-key cache."""
    global _POSITION_KEY_TOTAL
    _POSITION_KEYS.clear()
    _POSITION_KEY_TOTAL = 0


def _position_keys(count: int, salt: int, stream: int, device: torch.device) -> torch.Tensor:
    """Hashed (stream, draw kind, element position) words, cached: the same for every chunk, so
    a stream costs no tensor work until it draws, and a draw costs one hash round."""
    global _POSITION_KEY_TOTAL
    k = (count, salt, stream, str(device))
    keys = _POSITION_KEYS.get(k)
    if keys is None:
        if _POSITION_KEY_TOTAL + count > _POSITION_KEY_ELEMENTS or len(_POSITION_KEYS) >= _POSITION_KEY_ENTRIES:
            clear_position_keys()  # streams that draw once per step (fine-tuning) would pile up
        pos = torch.arange(count, dtype=torch.int64, device=device)
        with torch.inference_mode(False), torch.no_grad():
            words = _mix32_(_to_word((pos * _SALTS + (salt + _GOLDEN)) & _M32))
            keys = _mix32_(words.bitwise_xor_(_s32(_mix_int(stream ^ _STREAM_SALT))))
        _POSITION_KEYS[k] = keys
        _POSITION_KEY_TOTAL += count
    return keys


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

    def __init__(self, seed: int, index: torch.Tensor, stream: int = 0, *, below_2_32: bool = False,
                 below_2_31: bool = False) -> None:
        if index.dtype != torch.int64 or index.dim() != 1:
            raise TypeError("index must be a 1-D int64 tensor of sample indices")
        self.seed = int(seed)
        self.index = index
        self.stream = int(stream) & _M32
        s = _s32(_seed_word(self.seed))
        # Per-sample key: a function of (seed, i) only: lowbias32 of the low word of i, plus a
        # hashed high word for indices at or above 2**32 (``below_2_32``: the caller knows there
        # are none, which saves the ops; ``below_2_31``: nor at or above 2**31, so each index is
        # its own int32 word, one conversion instead of the masking).
        if below_2_31:
            fused = fused_kernel(_index_keys, index.device, index.shape, _probe_index)
            self._key = (fused or _index_keys)(index, s)
        else:
            self._key = _mix32_(_to_word(index & _M32).bitwise_xor_(s))
        if not (below_2_32 or below_2_31):
            hi = (index >> 32) & _M32
            self._key.add_(_mix32_(_to_word((hi + _GOLDEN) & _M32)).sub_(_s32(_mix_int(_GOLDEN))))

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def for_range(
        cls, seed: int, start: int, stop: int, device: torch.device | str = "cpu", stream: int = 0
    ) -> SampleRNG:
        """Draws for the samples ``start, ..., stop - 1``."""
        index = torch.arange(start, stop, dtype=torch.int64, device=device)
        return cls(seed, index, stream, below_2_32=0 <= start and stop <= 2**32,
                   below_2_31=0 <= start and stop <= 2**31)

    @classmethod
    def from_keys(cls, keys: torch.Tensor, stream: int = 0) -> SampleRNG:
        """Draws keyed by 32-bit words already random per sample (see :meth:`words`)."""
        if keys.dtype != torch.int64 or keys.dim() != 1:
            raise TypeError("keys must be a 1-D int64 tensor")
        new = object.__new__(SampleRNG)
        new.seed, new.index, new.stream = 0, keys, int(stream) & _M32
        new._key = _to_word(keys & _M32)
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
    def _words(self, shape: Sequence[int], salt: int = 0) -> torch.Tensor:
        """32 random bits as int32 words, for each sample and each element of ``shape``: a fresh
        tensor the caller may modify in place."""
        # One round suffices: both the sample key and the position key are already hashed.
        return self._hashed(_hashed_words, shape, salt)

    def _hashed(self, kernel: Any, shape: Sequence[int], *salts: int) -> torch.Tensor:
        """``kernel(sample keys, position keys of each salt)`` reshaped to ``(n, *shape)``: one
        compiled kernel inside :func:`transforms_zoo.fused.fused_draws`, the eager operators
        otherwise."""
        if not all(0 <= salt < _SALTS for salt in salts):
            raise ValueError(f"salt must lie in [0, {_SALTS})")
        count = math.prod(shape)
        pos_keys = [_position_keys(count, salt, self.stream, self.device) for salt in salts]
        probe = _probe_keys if len(salts) == 1 else functools.partial(_probe_keys, salts=len(salts))
        fused = fused_kernel(kernel, self.device, (self.n, count), probe)
        h = (fused or kernel)(self._key, *pos_keys)
        return h.reshape(self.n, *shape)

    def _bits(self, shape: Sequence[int], salt: int = 0) -> torch.Tensor:
        """32 random bits (as int64 in [0, 2**32)) for each sample and each element of ``shape``."""
        return self._hashed(_hashed_bits, shape, salt)

    def words(self) -> torch.Tensor:
        """One random 32-bit word per sample (int64 in [0, 2**32), shape ``(n,)``): keys for
        :meth:`from_keys`."""
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
            u = self._hashed(_hashed_uniform53, shape, 0, 1)  # 53 bits of two words: exact
        else:
            u = self._hashed(_hashed_uniform24, shape, 0)  # the top 24 bits of the words: exact
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
        # Sorting random keys (any fixed order of the words will do); a stable sort breaks the
        # (rare) ties by position.
        return _stable_argsort_rows(self._words((k,), 3))

    def choice(self, k: int, of: int) -> torch.Tensor:
        """``k`` distinct indices from ``range(of)`` per sample, shape ``(n, k)``."""
        return self.permutation(of)[:, :k]
