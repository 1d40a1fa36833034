"""Sample keys and the shard of each, held as arrays rather than a dict of Python objects.

A cache of ten million utterances has ten million keys. As a dict they cost hundreds of bytes
each, minutes to parse, and every DataLoader worker ends up with its own copy (reference counts
touch the pages). Here the keys are one UTF-8 byte array with offsets, the shards one int32
array, and lookups go through a sorted array of 64-bit key hashes. rqf keeps these arrays in
``hdf5_index.keys.h5`` beside the seed's ``hdf5_index.json`` and memory-maps them, so opening a
cache costs milliseconds and every process on a machine shares the same pages.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import h5py
import numpy as np

from rqf_h5_speech.keyhash import hash_key, hash_keys

SLASH, DOT, BACKSLASH, COLON = 47, 46, 92, 58


def encode_keys(keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(blob, offsets) of a list of keys: one copy of their UTF-8 bytes."""
    text = "".join(keys)
    blob = np.frombuffer(text.encode("utf-8", "surrogatepass"), np.uint8)
    if len(blob) == len(text):  # all ASCII: a character is a byte
        lengths = np.fromiter(map(len, keys), np.int64, len(keys))
    else:
        lengths = np.fromiter((len(k.encode("utf-8", "surrogatepass")) for k in keys), np.int64,
                              len(keys))
    offsets = np.zeros(len(keys) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return blob, offsets


def first_bad_key(blob: np.ndarray, offsets: np.ndarray) -> int | None:
    """Row of the first key that is empty, absolute (``/x``, ``C:/x``), has an empty, '.' or
    '..' part, a backslash or a NUL, found with array operations over all keys at once."""
    n = len(offsets) - 1
    if not n:
        return None
    starts, lengths = offsets[:-1], np.diff(offsets)
    bad = lengths <= 0
    if bad.any():
        return int(np.flatnonzero(bad)[0])
    ends = offsets[1:] - 1
    first, last = blob[starts], blob[ends]
    bad = (first == SLASH) | (last == SLASH)
    second = np.where(lengths >= 3, blob[np.minimum(starts + 1, ends)], 0)
    third = np.where(lengths >= 3, blob[np.minimum(starts + 2, ends)], 0)
    letter = ((first | 32) >= ord("a")) & ((first | 32) <= ord("z"))
    bad |= letter & (second == COLON) & ((third == SLASH) | (third == BACKSLASH))
    rows: list[np.ndarray] = [np.flatnonzero(bad)]

    def row_of(pos: np.ndarray) -> np.ndarray:
        return np.searchsorted(offsets, pos, "right") - 1

    odd = np.flatnonzero((blob == 0) | (blob == BACKSLASH))
    rows.append(row_of(odd[:1]))
    slash = np.flatnonzero(blob == SLASH)
    rows.append(row_of(slash[:-1][np.diff(slash) == 1][:1]))  # '//': an empty part
    dots = np.flatnonzero(blob == DOT)
    if len(dots):  # a part that is '.' or '..': a dot starting a part and ending it
        row = row_of(dots)
        at_start = (dots == offsets[row]) | (blob[np.maximum(dots - 1, 0)] == SLASH)
        after = dots + 1
        one = (after == offsets[row + 1]) | (blob[np.minimum(after, len(blob) - 1)] == SLASH)
        two_end = dots + 2
        second_dot = (after < offsets[row + 1]) & (blob[np.minimum(after, len(blob) - 1)] == DOT)
        two = second_dot & ((two_end == offsets[row + 1])
                            | (blob[np.minimum(two_end, len(blob) - 1)] == SLASH))
        rows.append(row[at_start & (one | two)][:1])
    found = np.concatenate(rows)
    return int(found.min()) if len(found) else None


class KeyTable(Sequence[str]):
    """Keys in order, each with its shard number and HDF5 group (usually the key itself).

    ``table[i]`` is the i-th key, ``table.position(key)`` its row (-1 when absent); the
    arrays may be memory-mapped from an index file.
    """

    def __init__(self, blob: np.ndarray, offsets: np.ndarray, file_idx: np.ndarray,
                 groups: tuple[np.ndarray, np.ndarray] | None = None,
                 hashes: np.ndarray | None = None, order: np.ndarray | None = None,
                 source: tuple[str, tuple[int, int]] | None = None) -> None:
        self.blob, self.offsets, self.file_idx, self.groups = blob, offsets, file_idx, groups
        self._hashes, self._order = hashes, order  # made at the first lookup when not given
        self._source = source  # (index file, (inode, mtime_ns)) when memory-mapped

    def _lookup(self) -> tuple[np.ndarray, np.ndarray]:
        if self._hashes is None or self._order is None:
            unsorted = hash_keys(self.blob, self.offsets)
            self._order = np.argsort(unsorted, kind="stable")
            self._hashes = unsorted[self._order]
        return self._hashes, self._order

    @property
    def hashes(self) -> np.ndarray:
        """The keys' hashes, sorted."""
        return self._lookup()[0]

    @property
    def order(self) -> np.ndarray:
        """Row of each sorted hash."""
        return self._lookup()[1]

    @classmethod
    def from_keys(cls, keys: Sequence[str], file_idx: Iterable[int] | np.ndarray,
                  groups: Sequence[str] | None = None) -> "KeyTable":
        blob, offsets = encode_keys(keys)
        fidx = np.asarray(file_idx if isinstance(file_idx, np.ndarray)
                          else np.fromiter(file_idx, np.int64, len(keys)), np.int32)
        return cls(blob, offsets, fidx, None if groups is None else encode_keys(groups))

    @classmethod
    def empty(cls) -> "KeyTable":
        return cls.from_keys([], [])

    # -- reading -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> list[str]: ...

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self._text(self.blob, self.offsets, j) for j in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(i)
        return self._text(self.blob, self.offsets, i)

    @staticmethod
    def _text(blob: np.ndarray, offsets: np.ndarray, i: int) -> str:
        return blob[offsets[i]:offsets[i + 1]].tobytes().decode("utf-8", "surrogatepass")

    def __iter__(self) -> Iterator[str]:
        blob, offsets = self.blob, self.offsets
        step = 65536
        for start in range(0, len(self), step):  # decode a block at a time
            stop = min(start + step, len(self))
            lo = int(offsets[start])
            raw = blob[lo:offsets[stop]].tobytes()
            bounds = (offsets[start:stop + 1] - lo).tolist()
            for a, b in zip(bounds, bounds[1:]):
                yield raw[a:b].decode("utf-8", "surrogatepass")

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.position(key) >= 0

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple, KeyTable)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def row(self, i: int) -> int:
        return i

    def take(self, indices: np.ndarray | Sequence[int]) -> "KeyRows":
        """A view of some rows, in the given order."""
        return KeyRows(self, np.asarray(indices, np.int64))

    def group(self, i: int) -> str:
        if self.groups is None:
            return self[i]
        return self._text(self.groups[0], self.groups[1], i)

    def position(self, key: str) -> int:
        """The row of ``key``, or -1."""
        data = key.encode("utf-8", "surrogatepass")
        h = hash_key(data)
        hashes, order = self._lookup()
        at = int(np.searchsorted(hashes, np.uint64(h)))
        while at < len(hashes) and int(hashes[at]) == h:
            row = int(order[at])
            if self.blob[self.offsets[row]:self.offsets[row + 1]].tobytes() == data:
                return row
            at += 1
        return -1

    def positions(self, keys: Sequence[str]) -> np.ndarray:
        """Rows of many keys at once (-1 for those absent)."""
        blob, offsets = encode_keys(keys)
        return self._positions(blob, offsets, hash_keys(blob, offsets))

    def _positions(self, blob: np.ndarray, offsets: np.ndarray, hashes: np.ndarray) -> np.ndarray:
        out = np.full(len(hashes), -1, np.int64)
        if not len(self) or not len(hashes):
            return out
        mine, order = self._lookup()
        at = np.searchsorted(mine, hashes)
        hit = at < len(mine)
        hit[hit] = mine[at[hit]] == hashes[hit]
        for i in np.flatnonzero(hit):  # a hash match: the bytes decide (and the rare collision)
            data = blob[offsets[i]:offsets[i + 1]].tobytes()
            j = int(at[i])
            while j < len(mine) and mine[j] == hashes[i]:
                row = int(order[j])
                if self.blob[self.offsets[row]:self.offsets[row + 1]].tobytes() == data:
                    out[i] = row
                    break
                j += 1
        return out

    def shard_counts(self) -> dict[int, int]:
        if not len(self):
            return {}
        counts = np.bincount(self.file_idx)
        return {int(i): int(counts[i]) for i in np.flatnonzero(counts)}

    def duplicates(self) -> list[str]:
        """Keys that appear more than once (by hash, then by their bytes)."""
        same = np.flatnonzero(self.hashes[1:] == self.hashes[:-1])
        found = []
        for at in same:
            a, b = int(self.order[at]), int(self.order[at + 1])
            if self[a] == self[b]:
                found.append(self[a])
        return found

    # -- changing (a new table; the old one stays valid for whoever holds it) -------------
    def updated(self, keys: Sequence[str], file_idx: Sequence[int] | np.ndarray) -> "KeyTable":
        """These keys now live in these shards: known keys keep their row, new ones are
        appended in order; a key given twice keeps the later shard. Groups become the keys."""
        latest = dict(zip(keys, np.asarray(file_idx, np.int64).tolist()))
        new_keys = list(latest)
        blob, offsets = encode_keys(new_keys)
        hashes = hash_keys(blob, offsets)
        rows = self._positions(blob, offsets, hashes)
        fidx = np.fromiter(latest.values(), np.int64, len(latest)).astype(np.int32)
        known = rows >= 0
        merged_fidx = np.concatenate([self.file_idx, fidx[~known]]).astype(np.int32)
        merged_fidx[rows[known]] = fidx[known]
        fresh = np.flatnonzero(~known)
        add_blob, add_offsets = _select(blob, offsets, fresh)
        merged_blob = np.concatenate([self.blob, add_blob])
        merged_offsets = np.concatenate([self.offsets, add_offsets[1:] + self.offsets[-1]])
        groups = None
        if self.groups is not None:  # rare (seed caches name groups after keys): in Python
            names = [self.group(i) for i in range(len(self))] + [new_keys[i] for i in fresh]
            for row in rows[known]:
                names[row] = self[int(row)]
            groups = encode_keys(names)
        all_hashes = np.concatenate([self.hashes_unsorted(), hashes[fresh]])
        order = np.argsort(all_hashes, kind="stable")
        return KeyTable(merged_blob, merged_offsets, merged_fidx, groups, all_hashes[order],
                        order)

    def hashes_unsorted(self) -> np.ndarray:
        out = np.empty_like(self.hashes)
        out[self.order] = self.hashes
        return out

    @classmethod
    def concatenate(cls, tables: Sequence["KeyTable"], file_idx: Sequence[np.ndarray]) -> "KeyTable":
        """Tables one after another, each with new shard numbers (duplicates are kept)."""
        blobs, offsets, groups, base = [], [np.zeros(1, np.int64)], [], 0
        for t in tables:
            blobs.append(np.asarray(t.blob))
            offsets.append(np.asarray(t.offsets[1:]) + base)
            base += int(t.offsets[-1])
        keep_groups = any(t.groups is not None for t in tables)
        if keep_groups:
            groups = [t.group(i) for t in tables for i in range(len(t))]
        hashes = np.concatenate([t.hashes_unsorted() for t in tables]) if tables \
            else np.zeros(0, np.uint64)
        order = np.argsort(hashes, kind="stable")
        return cls(np.concatenate(blobs) if blobs else np.zeros(0, np.uint8),
                   np.concatenate(offsets), np.concatenate(file_idx).astype(np.int32)
                   if file_idx else np.zeros(0, np.int32),
                   encode_keys(groups) if keep_groups else None, hashes[order], order)

    # -- on disk ---------------------------------------------------------------------------
    ARRAYS = ("key_bytes", "key_offsets", "file_idx", "hashes", "hash_order")

    def save(self, path: Path, attrs: dict[str, Any]) -> None:
        """Write the arrays, contiguous and uncompressed (so they can be memory-mapped)."""
        # every array starts on a 64-byte boundary of the file: a memory map of it is aligned
        # (numpy copies unaligned arrays for many operations, searchsorted among them)
        with h5py.File(path, "w", alignment_threshold=1, alignment_interval=64) as f:
            for name, arr in zip(self.ARRAYS, (self.blob, self.offsets, self.file_idx,
                                               self.hashes, self.order)):
                f.create_dataset(name, data=np.asarray(arr))
            if self.groups is not None:
                f.create_dataset("group_bytes", data=np.asarray(self.groups[0]))
                f.create_dataset("group_offsets", data=np.asarray(self.groups[1]))
            f.attrs.update(attrs)
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())

    @classmethod
    def load(cls, path: Path) -> tuple["KeyTable", dict[str, Any]]:
        """The table in ``path``, memory-mapped, and the file's attributes."""
        st = os.stat(path)
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            arrays = {name: _mapped(path, f[name]) for name in
                      (*cls.ARRAYS, *(("group_bytes", "group_offsets") if "group_bytes" in f
                                      else ()))}
        groups = (arrays["group_bytes"], arrays["group_offsets"]) if "group_bytes" in arrays \
            else None
        table = cls(arrays["key_bytes"], arrays["key_offsets"], arrays["file_idx"], groups,
                    arrays["hashes"], arrays["hash_order"],
                    source=(str(path), (st.st_ino, st.st_mtime_ns)))
        return table, attrs

    def __reduce__(self) -> Any:
        # a worker process maps the same file again (no copy through the pipe), as long as it
        # is still the file this table was read from
        if self._source is not None:
            path, ident = self._source
            try:
                st = os.stat(path)
                if (st.st_ino, st.st_mtime_ns) == ident:
                    return (_reload, (path, ident))
            except OSError:
                pass
        return (KeyTable, (np.asarray(self.blob), np.asarray(self.offsets),
                           np.asarray(self.file_idx), self.groups, np.asarray(self.hashes),
                           np.asarray(self.order)))


class KeyRows(Sequence[str]):
    """Some rows of a ``KeyTable`` in a given order: a split's keys without a str per key."""

    def __init__(self, table: KeyTable, rows: np.ndarray) -> None:
        self.table, self.rows = table, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self.table[int(r)] for r in self.rows[i]]
        return self.table[int(self.rows[i])]

    def __iter__(self) -> Iterator[str]:
        for r in self.rows.tolist():
            yield self.table[r]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple, KeyRows, KeyTable)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def row(self, i: int) -> int:
        return int(self.rows[i])

    def take(self, indices: np.ndarray | Sequence[int]) -> "KeyRows":
        return KeyRows(self.table, self.rows[np.asarray(indices, np.int64)])


def _reload(path: str, ident: tuple[int, int]) -> KeyTable:
    table, _ = KeyTable.load(Path(path))
    return table


def _mapped(path: Path, ds: h5py.Dataset) -> np.ndarray:
    """A read-only memory map of a contiguous dataset; read into memory when it cannot be."""
    offset = ds.id.get_offset()
    if offset is None or ds.size == 0 or ds.chunks is not None or ds.compression \
            or offset % ds.dtype.itemsize:
        return ds[()]  # not mappable as an aligned array: read
    return np.memmap(path, dtype=ds.dtype, mode="r", offset=offset, shape=ds.shape)


def _select(blob: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(blob, offsets) of the chosen rows, in the given order."""
    lengths = offsets[rows + 1] - offsets[rows]
    out_offsets = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lengths, out=out_offsets[1:])
    starts = np.repeat(offsets[rows] - out_offsets[:-1], lengths)
    return blob[np.arange(int(out_offsets[-1])) + starts], out_offsets
