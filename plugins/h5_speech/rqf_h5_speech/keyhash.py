"""The 64-bit hash of a sample key: part of the ``hdf5_index.keys.h5`` format (its sorted
hashes are how a key is found), so every coefficient here is fixed for good."""

from __future__ import annotations

import numpy as np

MASK = (1 << 64) - 1
_HASH_CHUNK = 1 << 22  # bytes hashed per vectorised step


def _splitmix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: mixes every input bit into every output bit (uint64, wraps)."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _splitmix_int(x: int) -> int:
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & MASK
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


_coef_np = np.zeros(0, np.uint64)
_coef_py: list[int] = []


def _coefficients(n: int) -> np.ndarray:
    """An odd 64-bit multiplier per byte position; fixed forever (it is part of the format)."""
    global _coef_np, _coef_py
    if len(_coef_np) < n:
        size = max(n, 2 * len(_coef_np), 256)
        _coef_np = _splitmix(np.arange(size, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)) \
            | np.uint64(1)
        _coef_py = [int(c) for c in _coef_np]
    return _coef_np


def hash_key(data: bytes) -> int:
    """The 64-bit hash of one UTF-8 key, equal to what ``hash_keys`` gives for it."""
    if len(_coef_py) < len(data):
        _coefficients(len(data))
    h = 0
    for coef, byte in zip(_coef_py, data):
        h += (byte + 1) * coef
    h = (h + len(data) * 0xD6E8FEB86659FD93) & MASK
    return _splitmix_int(h)


def hash_keys(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Hashes of every key of a (blob, offsets) pair, vectorised in chunks of the blob."""
    n = len(offsets) - 1
    out = np.empty(n, np.uint64)
    lengths = np.diff(offsets)
    if n and int(lengths.min()) <= 0:
        raise ValueError("keys must not be empty")
    coef = _coefficients(int(lengths.max()) if n else 0)
    start = 0
    with np.errstate(over="ignore"):
        while start < n:
            stop = int(np.searchsorted(offsets, offsets[start] + _HASH_CHUNK, "right")) - 1
            stop = min(max(stop, start + 1), n)
            lo, hi = int(offsets[start]), int(offsets[stop])
            lens = lengths[start:stop]
            pos = np.arange(hi - lo, dtype=np.int64) - np.repeat(offsets[start:stop] - lo, lens)
            terms = (blob[lo:hi].astype(np.uint64) + np.uint64(1)) * coef[pos]
            sums = np.add.reduceat(terms, offsets[start:stop] - lo)
            out[start:stop] = _splitmix(sums + lens.astype(np.uint64)
                                        * np.uint64(0xD6E8FEB86659FD93))
            start = stop
    return out
