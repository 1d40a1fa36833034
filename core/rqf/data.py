"""Data protocols: what datasets and splitters read, whatever the storage holds its arrays in.

A storage that has the members of ``ItemSource`` (item vectors by row) or ``SequenceSource``
(that, plus user sequences as a ``SequenceTable``) is read by every dataset written against
them (``items``, ``sequences``), and the views those datasets make (``SequenceView``) by every
splitter written against that (``leave_last_out``, ``temporal``, ``auto``). ``KeyedArrays`` is
the utterance-like counterpart: named arrays per key. Nothing here knows a file format.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from rqf.errors import ConfigError
from rqf.interfaces import Dataset, ItemVectors

# rows closer than this are read as one slice (the rows between are read and dropped)
MAX_GAP_ROWS = 256
# at most this many rows per slice read (a run with every row wanted is read whole)
BLOCK_ROWS = 1 << 16
# a run of rows sparser than this (wanted / spanned), or shorter than SLICE_MIN_ROWS, is read
# by one sorted selection with the other such rows instead, where the storage offers one
DENSE_SHARE = 0.25
SLICE_MIN_ROWS = 16


def read_rows(read_range: Callable[[int, int], np.ndarray], rows: np.ndarray,
              max_gap: int = MAX_GAP_ROWS, block: int = BLOCK_ROWS,
              read_sorted: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Rows ``rows`` (any order, repeats allowed) of a row-major array.

    ``read_range(start, stop)`` returns rows [start, stop); ``read_sorted(rows)`` (optional)
    returns the given increasing rows. Sorted distinct rows are grouped into runs whose gaps
    are at most ``max_gap``: a dense run is read in slices (on HDF5 many times faster than a
    selection of the same rows), a sparse one goes with the other sparse rows into one sorted
    selection, so a scattered batch does not read the rows between. The rows land in one
    array in place; asked in increasing order without repeats, that array is the answer,
    and a single run with every row wanted is returned as read.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return read_range(0, 0)
    uniq, inverse = np.unique(rows, return_inverse=True)
    in_order = len(uniq) == len(rows) and bool((np.diff(rows) > 0).all())
    if uniq[-1] - uniq[0] + 1 == len(uniq):
        whole = read_range(int(uniq[0]), int(uniq[-1]) + 1)  # one run, every row wanted
        return whole if in_order else np.asarray(whole)[inverse]
    breaks = np.flatnonzero(np.diff(uniq) > max_gap) + 1
    out: np.ndarray | None = None
    sparse: list[tuple[int, np.ndarray]] = []

    def place(where: slice | np.ndarray, values: np.ndarray) -> None:
        nonlocal out
        if out is None:  # the first values read give the row shape and dtype
            out = np.empty((len(uniq), *values.shape[1:]), values.dtype)
        out[where] = values

    at = 0
    for run in np.split(uniq, breaks):
        lo, hi = int(run[0]), int(run[-1]) + 1
        if read_sorted is not None and (len(run) < SLICE_MIN_ROWS
                                        or len(run) < DENSE_SHARE * (hi - lo)):
            sparse.append((at, run))
            at += len(run)
            continue
        for start in range(lo, hi, block):
            stop = min(start + block, hi)
            want = run[(run >= start) & (run < stop)]
            if len(want):
                part = np.asarray(read_range(start, stop))
                place(slice(at, at + len(want)),
                      part if len(want) == stop - start else part[want - start])
                at += len(want)
    if sparse:
        where = np.concatenate([np.arange(a, a + len(r)) for a, r in sparse])
        wanted = np.concatenate([r for _, r in sparse])
        for a in range(0, len(wanted), block):
            place(where[a:a + block], np.asarray(read_sorted(wanted[a:a + block])))
    assert out is not None
    return out if in_order else out[inverse]


def positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ranges [starts[i], starts[i] + lengths[i]) without a Python loop."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    shift = np.repeat(np.asarray(starts, np.int64) - np.cumsum(lengths) + lengths, lengths)
    return shift + np.arange(total, dtype=np.int64)


def flatten_rows(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Variable-length integer rows as one flat int64 array and (len(rows) + 1,) offsets."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate(rows).astype(np.int64) if len(rows) else np.zeros(0, np.int64)
    return flat, offsets


def rows_of(item_ids: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Map raw item ids to row numbers of ``item_ids``; -1 where an id is unknown."""
    order = np.argsort(item_ids, kind="stable")
    sorted_ids = item_ids[order]
    pos = np.searchsorted(sorted_ids, query)
    pos_clipped = np.minimum(pos, len(sorted_ids) - 1)
    found = (len(sorted_ids) > 0) & (sorted_ids[pos_clipped] == query) if len(sorted_ids) else \
        np.zeros(len(query), bool)
    return np.where(found, order[pos_clipped], -1).astype(np.int64)


@dataclass
class SequenceTable:
    """All user sequences as flat arrays: user i owns positions offsets[i]:offsets[i+1].

    ``user_ids`` (n_users,) str, ``offsets`` (n_users + 1,) int64, ``item_ids`` and the
    optional ``timestamps`` (n_interactions,) int64, in each user's order.
    """

    user_ids: np.ndarray
    offsets: np.ndarray
    item_ids: np.ndarray
    timestamps: np.ndarray | None = None

    @classmethod
    def from_lists(cls, user_ids: Sequence[str], sequences: Sequence[Sequence[int]],
                   timestamps: Sequence[Sequence[int]] | None = None) -> "SequenceTable":
        items, offsets = flatten_rows(sequences)
        return cls(np.asarray(user_ids, dtype=object), offsets, items,
                   None if timestamps is None else flatten_rows(timestamps)[0])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.user_ids)


@dataclass
class SequenceRecords:
    """The samples of a sequence view: user row, input positions [start, end), target.

    Positions index into the user's own sequence; ``target`` is a position or -1.
    """

    user: np.ndarray
    start: np.ndarray
    end: np.ndarray
    target: np.ndarray

    @classmethod
    def build(cls, user, start, end, target) -> "SequenceRecords":
        return cls(*(np.asarray(a, dtype=np.int64) for a in (user, start, end, target)))

    def __len__(self) -> int:
        return len(self.user)


class ItemSource(Protocol):
    """A storage of item vectors: row r holds item ``item_ids[r]``."""

    item_ids: np.ndarray  # (n_items,) int64, distinct
    embedding_dim: int

    def read_embeddings(self, rows: np.ndarray) -> np.ndarray:
        """float32 (len(rows), embedding_dim); any order, repeats allowed."""

    def read_embedding_range(self, start: int, stop: int) -> np.ndarray:
        """float32 rows [start, stop)."""

    def read_features(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """int32 (len(rows), width) feature tokens and their (len(rows),) lengths."""

    def describe(self) -> dict[str, Any]: ...


class SequenceSource(ItemSource, Protocol):
    """Item vectors plus user sequences over them (``table`` is None when there are none)."""

    table: SequenceTable | None
    sequence_rows: np.ndarray | None  # item row of every position of table.item_ids


class ArrayGroup(Protocol):
    """The named arrays of one key, opened but not read: metadata first, values on demand."""

    def __contains__(self, name: str) -> bool: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def dtype(self, name: str) -> np.dtype: ...

    def read(self, name: str) -> np.ndarray: ...

    def read_into(self, name: str, out: np.ndarray) -> None:
        """The first ``out.shape[0]`` frames of a (..., T, dim) array, into ``out``."""


class KeyedArrays(Protocol):
    """Named arrays per key (an utterance, a document), read one key at a time."""

    keys: Sequence[str]

    def arrays(self, key: str) -> ArrayGroup: ...

    def describe(self) -> dict[str, Any]: ...


class SequenceView(Protocol):
    """A dataset view over user sequences, what sequence splitters and next-item models read."""

    table: SequenceTable
    records: SequenceRecords

    def with_records(self, records: SequenceRecords, role: str) -> Any:
        """The same data with other samples; ``role`` is train, valid, test or all."""


class ItemRows(Dataset):
    """A view of rows of an ``ItemSource``: one sample per item (its id and embedding).

    A base for item datasets: a subclass names itself and may add to each sample (override
    ``__getitems__``); splitting, training vectors and export work on the rows alone.
    """

    sample_unit = "items"

    def __init__(self, storage: ItemSource, rows: np.ndarray | None = None,
                 **params: Any) -> None:
        require(storage, ItemSource, "dataset.type", repr(self.name))
        super().__init__(storage, **params)  # type: ignore[arg-type]
        self.storage: ItemSource = storage  # type: ignore[assignment]
        self.rows = np.arange(len(storage.item_ids)) if rows is None else np.asarray(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        # a DataLoader batch in one read per array instead of one per item
        rows = self.rows[np.asarray(indices, dtype=np.int64)]
        embeddings = self.storage.read_embeddings(rows)
        ids = self.storage.item_ids[rows]
        return [{"item_id": int(ids[i]), "embedding": embeddings[i]} for i in range(len(rows))]

    def describe(self) -> dict[str, Any]:
        return {"input_dim": int(self.storage.embedding_dim), "unit": "item",
                "n_samples": len(self), **self.storage.describe()}

    def subset(self, indices: np.ndarray, role: str = "train") -> "ItemRows":
        view = copy.copy(self)
        view.rows = self.rows[np.asarray(indices, dtype=np.int64)]
        view.role = role
        return view

    def vectors(self) -> np.ndarray:
        return self.storage.read_embeddings(self.rows)

    def export_rows(self) -> np.ndarray:
        return self.rows

    def key_ids(self) -> np.ndarray:
        return self.storage.item_ids[self.rows]

    def export_source(self) -> ItemVectors:
        return all_items(self.storage)


def all_items(storage: ItemSource) -> ItemVectors:
    """Every item of ``storage``, whatever the view or split: what semantic IDs are made for."""
    keys = getattr(storage, "item_keys", None)  # a Storage's; a bare ItemSource has none
    return ItemVectors(ids=np.asarray(storage.item_ids).copy(), read=storage.read_embedding_range,
                       read_rows=storage.read_embeddings, keys=keys() if keys else None)


def input_positions(view: SequenceView) -> np.ndarray:
    """Flat positions (into ``view.table.item_ids``) of every input item of the view."""
    r = view.records
    return positions(view.table.offsets[r.user] + r.start, r.end - r.start)


def members(protocol: type) -> list[str]:
    """The attribute and method names a protocol asks for."""
    names: dict[str, None] = {}
    for klass in reversed(protocol.__mro__):
        if klass in (object, Protocol) or not getattr(klass, "_is_protocol", False):
            continue
        names.update(dict.fromkeys(getattr(klass, "__annotations__", {})))
        names.update(dict.fromkeys(n for n, v in vars(klass).items()
                                   if callable(v) and not n.startswith("_")))
    return list(names)


def missing_members(obj: Any, protocol: type) -> list[str]:
    """Members of ``protocol`` that ``obj`` lacks (class attributes, properties or fields)."""
    return [n for n in members(protocol)
            if not hasattr(type(obj), n) and n not in getattr(obj, "__dict__", {})]


def require(obj: Any, protocol: type, key: str, what: str) -> Any:
    """``obj`` when it has every member of ``protocol``; otherwise a ConfigError at ``key``."""
    missing = missing_members(obj, protocol)
    if missing:
        name = getattr(obj, "name", "") or type(obj).__name__
        raise ConfigError(f"{key}: {what} reads a {protocol.__name__} and {name!r} lacks "
                          f"{', '.join(missing)}")
    return obj
