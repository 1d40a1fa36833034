"""Checks of item_data.h5 and sequence.h5 against the format, collecting every problem.

Opening a storage raises the first problem; ``rqf inspect`` lists them all. Each problem names
the file and the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from rqf import DataError, SequenceTable, flatten_rows, rows_of, stored_outside

CHUNK_ROWS = 65536
# values this large make float32 squared distances overflow (768-d: above ~7e17)
MAX_ABS_VALUE = 1e15


@dataclass
class Problems:
    path: Path
    items: list[str] = field(default_factory=list)

    def add(self, field_name: str, message: str) -> None:
        self.items.append(f"{self.path}: {field_name}: {message}")

    def raise_first(self) -> None:
        if self.items:
            more = f" (and {len(self.items) - 1} more problems; see rqf inspect)" \
                if len(self.items) > 1 else ""
            raise DataError(self.items[0] + more)


def open_h5(path: Path) -> h5py.File:
    """Open read-only with errors that say what is wrong with the file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected an HDF5 file")
    if not h5py.is_hdf5(path):
        raise DataError(f"{path}: not an HDF5 file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: cannot be opened as HDF5, the file may be truncated or "
                        f"corrupted ({str(exc).splitlines()[0]})") from None


def _dtype_kind(ds: h5py.Dataset) -> str:
    base = h5py.check_vlen_dtype(ds.dtype)
    if base is not None:
        return "vlen-str" if base in (str, bytes) else f"vlen-{np.dtype(base).kind}"
    if h5py.check_string_dtype(ds.dtype) is not None:
        return "str"
    return ds.dtype.kind


def _need(f: h5py.File, name: str, kinds: str, ndim: int, probs: Problems,
          expected: str) -> h5py.Dataset | None:
    if name not in f:
        if isinstance(f.get(name, getlink=True), h5py.ExternalLink):
            probs.add(name, f"{stored_outside(f, name)}, which does not resolve; rqf reads only "
                      "values inside the file")
        else:
            probs.add(name, f"missing dataset (expected {expected})")
        return None
    outside = stored_outside(f, name)
    if outside:
        probs.add(name, f"{outside}; rqf reads only values inside the file (copy them in, e.g. "
                  "with h5py)")
        return None
    ds = f[name]
    if not isinstance(ds, h5py.Dataset):
        probs.add(name, f"is a group, expected a dataset ({expected})")
        return None
    kind = _dtype_kind(ds)
    if kind not in kinds.split("|"):
        probs.add(name, f"expected {expected}, found dtype {ds.dtype} with shape {ds.shape}")
        return None
    if ds.ndim != ndim:
        probs.add(name, f"expected {expected}, found {ds.ndim}-d shape {ds.shape}")
        return None
    return ds


def _attr(f: h5py.File, name: str, probs: Problems) -> Any:
    if name not in f.attrs:
        probs.add(f"attrs/{name}", "missing attribute")
        return None
    return f.attrs[name]


@dataclass
class ItemMeta:
    n_items: int
    embedding_dim: int
    item_ids: np.ndarray
    embedding_dtype: np.dtype
    has_features: bool
    max_feature_len: int


def check_item_file(f: h5py.File, path: Path, check_values: bool = True,
                    embeddings: np.ndarray | None = None) -> tuple[ItemMeta | None, Problems]:
    """Check an item file; ``embeddings``, when already read whole, spares a second read."""
    probs = Problems(Path(path))
    ids_ds = _need(f, "item_ids", "i|u", 1, probs, "(n,) integer item ids")
    emb = _need(f, "embeddings", "f", 2, probs, "(n, d) float embeddings")
    feats = feat_len = None
    if "features" in f or "feature_lengths" in f:
        feats = _need(f, "features", "i|u", 2, probs, "(n, max_feature_len) integer tokens")
        feat_len = _need(f, "feature_lengths", "i|u", 1, probs, "(n,) integer lengths")
    n_attr = _attr(f, "n_items", probs)
    d_attr = _attr(f, "embedding_dim", probs)
    if ids_ds is None or emb is None:
        return None, probs
    n = ids_ds.shape[0]
    item_ids = ids_ds[()].astype(np.int64)
    if emb.shape[0] != n:
        probs.add("embeddings", f"has {emb.shape[0]} rows but item_ids has {n}")
    if n_attr is not None and int(n_attr) != n:
        probs.add("attrs/n_items", f"says {int(n_attr)} but item_ids has {n}")
    if d_attr is not None and int(d_attr) != emb.shape[1]:
        probs.add("attrs/embedding_dim", f"says {int(d_attr)} but embeddings are {emb.shape[1]}-d")
    if n == 0:
        probs.add("item_ids", "is empty")
    max_len = _check_features(f, feats, feat_len, n, probs)
    if "item_keys" in f:
        keys = _need(f, "item_keys", "vlen-str|str", 1, probs, "(n,) string ids of the items")
        if keys is not None and keys.shape[0] != n:
            probs.add("item_keys", f"has {keys.shape[0]} rows but item_ids has {n}")
    uniq, counts = np.unique(item_ids, return_counts=True)
    dup = uniq[counts > 1]
    if len(dup):
        probs.add("item_ids", f"{len(dup)} duplicate ids, e.g. {dup[:5].tolist()}")
    if check_values and emb.shape[0] == n:
        _check_values(emb if embeddings is None else embeddings, item_ids, probs)
    meta = ItemMeta(n, emb.shape[1], item_ids, emb.dtype, feats is not None, max_len)
    return meta, probs


def _check_features(f: h5py.File, feats: h5py.Dataset | None, feat_len: h5py.Dataset | None,
                    n: int, probs: Problems) -> int:
    """Feature tokens against their lengths and the item count; the feature width."""
    if feats is None or feat_len is None:
        return 0
    max_len = feats.shape[1]
    if "max_feature_len" in f.attrs and int(f.attrs["max_feature_len"]) != max_len:
        probs.add("attrs/max_feature_len", f"says {int(f.attrs['max_feature_len'])} but "
                  f"features has {max_len} columns")
    for ds in (feats, feat_len):
        if ds.shape[0] != n:
            probs.add(ds.name.lstrip("/"), f"has {ds.shape[0]} rows but item_ids has {n}")
    if feat_len.shape[0] == n:
        lengths = feat_len[()]
        bad = np.flatnonzero((lengths < 0) | (lengths > max_len))
        if len(bad):
            probs.add("feature_lengths", f"{len(bad)} values outside 0..{max_len}, first at "
                      f"row {bad[0]} ({lengths[bad[0]]})")
    return max_len


def bad_values(block: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Rows of ``block`` (the embeddings of ``rows``) holding NaN or Inf, rows holding values
    of magnitude >= MAX_ABS_VALUE, and the largest finite magnitude among the latter.

    Two reductions over the block and no copy of it: a row whose largest and smallest values
    lie within +-MAX_ABS_VALUE holds neither (a NaN fails both comparisons); only the rows
    that fail are looked at again.
    """
    none = np.zeros(0, np.int64)
    if not block.size:
        return none, none, 0.0
    ok = (block.max(axis=1) < MAX_ABS_VALUE) & (block.min(axis=1) > -MAX_ABS_VALUE)
    if ok.all():
        return none, none, 0.0
    suspects = np.flatnonzero(~ok)
    values = np.abs(block[suspects])
    finite = np.isfinite(values).all(axis=1)
    top = np.where(np.isfinite(values), values, 0).max(axis=1)
    huge = finite & (top >= MAX_ABS_VALUE)
    return rows[suspects[~finite]], rows[suspects[huge]], float(top[huge].max(initial=0.0))


def add_value_problems(bad: np.ndarray, huge: np.ndarray, peak: float, item_ids: np.ndarray,
                       probs: Problems) -> None:
    if len(bad):
        probs.add("embeddings", f"{len(bad)} rows hold NaN or Inf, first at row {bad[0]} "
                  f"(item id {item_ids[bad[0]]})")
    if len(huge):
        probs.add("embeddings", f"{len(huge)} rows hold values of magnitude >= "
                  f"{MAX_ABS_VALUE:.0e} (up to {peak:.3g}, first at row {huge[0]}, item id "
                  f"{item_ids[huge[0]]}): unusable scale, distances between such vectors "
                  "overflow float32; rescale the embeddings")


def _check_values(source, item_ids: np.ndarray, probs: Problems) -> None:
    """``bad_values`` of the whole file, streamed in chunks when it is not in memory."""
    bad, huge, peak = [], [], 0.0
    for start in range(0, len(item_ids), CHUNK_ROWS):
        block = source[start:start + CHUNK_ROWS]
        b, h, p = bad_values(block, np.arange(start, start + len(block)))
        bad.append(b)
        huge.append(h)
        peak = max(peak, p)
    add_value_problems(np.concatenate(bad) if bad else np.zeros(0, np.int64),
                       np.concatenate(huge) if huge else np.zeros(0, np.int64), peak, item_ids,
                       probs)


def _read_user_ids(users: h5py.Dataset, probs: Problems) -> np.ndarray | None:
    """User ids as strings, each once; None when they are not text."""
    raw = users[()]
    user_ids = np.empty(len(raw), dtype=object)
    for row, user in enumerate(raw):
        try:
            user_ids[row] = user.decode() if isinstance(user, bytes) else str(user)
        except UnicodeDecodeError:
            probs.add("user_ids", f"row {row} is not UTF-8 text; user ids are strings")
            return None
    unique, first, counts = np.unique(user_ids.astype(str), return_index=True,
                                      return_counts=True)
    if (counts > 1).any():
        twice = np.flatnonzero(counts > 1)
        probs.add("user_ids", f"{len(twice)} user ids appear more than once, e.g. "
                  f"{str(unique[twice[0]])!r} (row {first[twice[0]]}); a user is one sequence")
    return user_ids


def read_sequence_file(f: h5py.File, path: Path) -> tuple[SequenceTable | None, Problems]:
    probs = Problems(Path(path))
    users = _need(f, "user_ids", "vlen-str|str|i|u", 1, probs, "(m,) user ids (strings)")
    seqs = _need(f, "sequences", "vlen-i|vlen-u", 1, probs, "(m,) variable-length int64 item ids")
    lens = _need(f, "sequence_lengths", "i|u", 1, probs, "(m,) integer lengths")
    ts_ds = None
    if "timestamps" in f:
        ts_ds = _need(f, "timestamps", "vlen-i|vlen-u|vlen-f", 1, probs,
                      "(m,) variable-length int64 timestamps")
    n_attr = _attr(f, "n_sequences", probs)
    if users is None or seqs is None or lens is None:
        return None, probs
    m = seqs.shape[0]
    for ds in (users, lens):
        if ds.shape[0] != m:
            probs.add(ds.name.lstrip("/"), f"has {ds.shape[0]} rows but sequences has {m}")
    if n_attr is not None and int(n_attr) != m:
        probs.add("attrs/n_sequences", f"says {int(n_attr)} but sequences has {m}")
    user_ids = _read_user_ids(users, probs)
    if user_ids is None:
        return None, probs
    flat, offsets = flatten_rows(seqs[()])
    lengths = np.diff(offsets)
    if lens.shape[0] == m:
        declared = lens[()].astype(np.int64)
        bad = np.flatnonzero(declared != lengths)
        if len(bad):
            i = bad[0]
            probs.add("sequence_lengths", f"{len(bad)} rows disagree with their sequence, first "
                      f"user {user_ids[i]!r} (row {i}): says {declared[i]}, sequence has {lengths[i]}")
    empty = np.flatnonzero(lengths == 0)
    if len(empty):
        probs.add("sequences", f"{len(empty)} empty sequences, first user {user_ids[empty[0]]!r} "
                  f"(row {empty[0]})")
    timestamps = None
    if ts_ds is not None and ts_ds.shape[0] == m:
        ts_flat, ts_offsets = flatten_rows(ts_ds[()])
        ts_len = np.diff(ts_offsets)
        bad = np.flatnonzero(ts_len != lengths)
        if len(bad):
            i = bad[0]
            probs.add("timestamps", f"{len(bad)} rows differ in length from their sequence, first "
                      f"user {user_ids[i]!r} (row {i}): {ts_len[i]} timestamps for {lengths[i]} items")
        else:
            step_down = np.flatnonzero(np.diff(ts_flat) < 0)
            # a drop across a boundary between two users is fine
            inside = step_down[~np.isin(step_down + 1, offsets)]
            if len(inside):
                row = int(np.searchsorted(offsets, inside[0], side="right") - 1)
                users_affected = len(np.unique(np.searchsorted(offsets, inside, side="right")))
                probs.add("timestamps", f"decrease within {users_affected} sequences, first user "
                          f"{user_ids[row]!r} (row {row}): item {inside[0] - offsets[row] + 2} "
                          "is earlier than the one before")
            timestamps = ts_flat.astype(np.int64)
    elif ts_ds is not None:
        probs.add("timestamps", f"has {ts_ds.shape[0]} rows but sequences has {m}")
    return SequenceTable(user_ids, offsets, flat, timestamps), probs


def check_known_items(table: SequenceTable, item_ids: np.ndarray, path: Path,
                      probs: Problems) -> np.ndarray:
    """Rows of each sequence position in the item file (-1 where the id is unknown)."""
    rows = rows_of(item_ids, table.item_ids)
    unknown = rows < 0
    if unknown.any():
        ids = np.unique(table.item_ids[unknown])
        probs.add("sequences", f"{int(unknown.sum())} interactions with {len(ids)} item ids not in "
                  f"the item file, e.g. {ids[:5].tolist()}")
    return rows
