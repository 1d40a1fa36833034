"""Writing item_data.h5 and sequence.h5 in the seed format, from arrays or interaction files.

Files are written to a temporary name beside the target and renamed, so an interrupted write
never leaves a half file and never replaces a good one.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from rqf import DataError, atomic_h5


def write_item_data(path: str | Path, item_ids: Sequence[int], embeddings: np.ndarray,
                    features: np.ndarray | None = None,
                    feature_lengths: np.ndarray | None = None) -> Path:
    """Write an item file: ``item_ids`` (n,), ``embeddings`` (n, d), optional feature tokens."""
    path = Path(path)
    ids = np.asarray(item_ids)
    emb = np.asarray(embeddings)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise DataError(f"{path}: item_ids: expected a 1-d integer array, got {ids.dtype} {ids.shape}")
    if emb.ndim != 2 or emb.dtype.kind != "f":
        raise DataError(f"{path}: embeddings: expected an (n, d) float array, got {emb.dtype} {emb.shape}")
    if len(ids) != len(emb):
        raise DataError(f"{path}: embeddings has {len(emb)} rows for {len(ids)} item ids")
    if len(np.unique(ids)) != len(ids):
        raise DataError(f"{path}: item_ids: ids must be unique")
    if not np.isfinite(emb).all():
        raise DataError(f"{path}: embeddings: {int((~np.isfinite(emb).all(1)).sum())} rows hold NaN or Inf")
    if features is None:
        features = np.zeros((len(ids), 0), np.int32)
        feature_lengths = np.zeros(len(ids), np.int32)
    features = np.asarray(features, dtype=np.int32)
    if feature_lengths is None:
        feature_lengths = (features != 0).sum(axis=1)
    feature_lengths = np.asarray(feature_lengths, dtype=np.int32)
    if features.shape[0] != len(ids) or feature_lengths.shape != (len(ids),):
        raise DataError(f"{path}: features: expected {len(ids)} rows")
    with atomic_h5(path) as f:
        f.create_dataset("item_ids", data=ids.astype(np.int64))
        f.create_dataset("embeddings", data=emb.astype(np.float32))
        f.create_dataset("features", data=features)
        f.create_dataset("feature_lengths", data=feature_lengths)
        f.attrs["n_items"] = len(ids)
        f.attrs["embedding_dim"] = emb.shape[1]
        f.attrs["max_feature_len"] = features.shape[1]
        f.attrs["original_order_preserved"] = True
    return path


def write_sequence_data(path: str | Path, user_ids: Sequence[str],
                        sequences: Sequence[Sequence[int]],
                        timestamps: Sequence[Sequence[int]] | None = None,
                        total_items: int | None = None) -> Path:
    """Write a sequence file: per-user item id lists in order, optional per-item timestamps."""
    path = Path(path)
    if len(user_ids) != len(sequences):
        raise DataError(f"{path}: {len(user_ids)} user ids for {len(sequences)} sequences")
    seqs = [np.asarray(s, dtype=np.int64) for s in sequences]
    lengths = np.array([len(s) for s in seqs], dtype=np.int32)
    if len(seqs) and lengths.min() == 0:
        raise DataError(f"{path}: sequences: user {user_ids[int(np.argmin(lengths))]!r} has an "
                        "empty sequence")
    ts = None
    if timestamps is not None:
        ts = [np.asarray(t, dtype=np.int64) for t in timestamps]
        for u, s, t in zip(user_ids, seqs, ts):
            if len(s) != len(t):
                raise DataError(f"{path}: timestamps: user {u!r} has {len(t)} timestamps for "
                                f"{len(s)} items")
            if len(t) > 1 and (np.diff(t) < 0).any():
                raise DataError(f"{path}: timestamps: user {u!r} has decreasing timestamps")
    all_items = np.concatenate(seqs) if seqs else np.zeros(0, np.int64)
    with atomic_h5(path) as f:
        f.create_dataset("user_ids", data=np.array([str(u) for u in user_ids], dtype=object),
                         dtype=h5py.string_dtype())
        f.create_dataset("sequences", data=_ragged(seqs), dtype=h5py.vlen_dtype(np.int64))
        f.create_dataset("sequence_lengths", data=lengths)
        if ts is not None:
            f.create_dataset("timestamps", data=_ragged(ts), dtype=h5py.vlen_dtype(np.int64))
        f.attrs["n_sequences"] = len(seqs)
        f.attrs["max_sequence_length"] = int(lengths.max()) if len(seqs) else 0
        f.attrs["total_items"] = int(total_items if total_items is not None
                                     else len(np.unique(all_items)))
        f.attrs["avg_sequence_length"] = float(lengths.mean()) if len(seqs) else 0.0
        f.attrs["order_preserved"] = True
    return path


def _ragged(rows: list[np.ndarray]) -> np.ndarray:
    out = np.empty(len(rows), dtype=object)
    out[:] = rows  # one vlen write for all rows instead of one h5py call per row
    return out


def read_interactions(path: str | Path, delimiter: str | None = None, user_col: int = 0,
                      item_col: int = 1, time_col: int | None = 2,
                      ) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """Read user, item[, time] columns from a CSV/TSV; a header row is detected and skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: interactions file not found")
    with open(path, newline="") as fh:
        sample = fh.read(4096)
        fh.seek(0)
        if delimiter is None:
            delimiter = "\t" if "\t" in sample else ("," if "," in sample else " ")
        reader = csv.reader(fh, delimiter=delimiter, skipinitialspace=True)
        users, items, times = [], [], []
        need = max(c for c in (user_col, item_col, time_col) if c is not None)
        for lineno, row in enumerate(reader, start=1):
            if not row or row[0].startswith("#"):
                continue
            if len(row) <= need:
                raise DataError(f"{path}: line {lineno}: expected at least {need + 1} columns, "
                                f"found {len(row)}")
            try:
                item = int(row[item_col])
                t = int(float(row[time_col])) if time_col is not None else 0
            except ValueError:
                if lineno == 1 and not users:
                    continue  # a header
                raise DataError(f"{path}: line {lineno}: item and time must be integers, got "
                                f"{row[item_col]!r}" + (f", {row[time_col]!r}" if time_col is not None else "")) from None
            users.append(row[user_col])
            items.append(item)
            times.append(t)
    if not users:
        raise DataError(f"{path}: no interactions found")
    return users, np.array(items, np.int64), (np.array(times, np.int64) if time_col is not None else None)


def from_interactions(interactions: str | Path, out_dir: str | Path,
                      embeddings: str | Path | None = None, item_ids: str | Path | None = None,
                      delimiter: str | None = None, time_col: int | None = 2,
                      drop_unknown_items: bool = False) -> dict[str, Path]:
    """Build sequence.h5 (and item_data.h5 from an embeddings .npy) from an interaction file.

    Interactions are ordered by time per user with a stable sort, so ties keep file order.
    Without ``item_ids`` (a .npy of ids), row i of the embeddings is item id i.
    """
    out_dir = Path(out_dir)
    users, items, times = read_interactions(interactions, delimiter, time_col=time_col)
    written: dict[str, Path] = {}
    known = None
    if embeddings is not None:
        emb = _load_npy(embeddings, "embeddings")
        ids = _load_npy(item_ids, "item_ids") if item_ids is not None else np.arange(len(emb))
        known = ids
        written["items"] = write_item_data(out_dir / "item_data.h5", ids, emb)
    if known is not None:
        unknown = ~np.isin(items, known)
        if unknown.any():
            if not drop_unknown_items:
                raise DataError(f"{interactions}: {int(unknown.sum())} interactions name items "
                                f"missing from the embeddings, e.g. {np.unique(items[unknown])[:5].tolist()}")
            keep = ~unknown
            users = [u for u, k in zip(users, keep) if k]
            items = items[keep]
            times = times[keep] if times is not None else None
    user_arr = np.array(users, dtype=object)
    order_users, first_seen = np.unique(user_arr, return_index=True)
    user_order = order_users[np.argsort(first_seen, kind="stable")]
    codes = {u: i for i, u in enumerate(user_order)}
    owner = np.fromiter((codes[u] for u in users), np.int64, count=len(users))
    keys = (owner, times) if times is not None else (owner,)
    order = np.lexsort(tuple(reversed(keys)))  # by user, then time; stable among ties
    owner, items = owner[order], items[order]
    times = times[order] if times is not None else None
    bounds = np.flatnonzero(np.diff(owner)) + 1
    seqs = np.split(items, bounds)
    ts = np.split(times, bounds) if times is not None else None
    written["sequences"] = write_sequence_data(
        out_dir / "sequence.h5", [str(u) for u in user_order], seqs, ts,
        total_items=len(known) if known is not None else None)
    return written


def _load_npy(path: str | Path, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file not found") from None
    except ValueError as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc})") from None
