"""Writing item_data.h5 and sequence.h5 in the seed format, from arrays or interaction files.

Files are written to a temporary name beside the target and renamed, so an interrupted write
never leaves a half file and never replaces a good one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import h5py
import numpy as np

from rqf import DataError, atomic_h5, check_output, check_keys, write_keys


def write_item_data(path: str | Path, item_ids: Sequence[int], embeddings: np.ndarray,
                    features: np.ndarray | None = None,
                    feature_lengths: np.ndarray | None = None,
                    item_keys: Sequence[str] | None = None,
                    attrs: dict[str, Any] | None = None) -> Path:
    """Write an item file: ``item_ids`` (n,), ``embeddings`` (n, d), optional feature tokens,
    and ``item_keys``: each item's original string id (an ASIN) where the ids were numbered."""
    path = Path(path)
    if item_keys is not None:
        check_keys(item_keys, len(item_ids), f"{path}")
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
        write_keys(f, item_keys)
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
    return path


def write_sequence_data(path: str | Path, user_ids: Sequence[str],
                        sequences: Sequence[Sequence[int]],
                        timestamps: Sequence[Sequence[int]] | None = None,
                        total_items: int | None = None,
                        item_keys: Sequence[str] | None = None,
                        attrs: dict[str, Any] | None = None) -> Path:
    """Write a sequence file: per-user item id lists in order, optional per-item timestamps,
    and ``item_keys`` (string id of item id i) when the ids were numbered from strings."""
    path = Path(path)
    if item_keys is not None:
        check_keys(item_keys, len(item_keys), f"{path}")
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
        write_keys(f, item_keys)
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
    return path


def _ragged(rows: list[np.ndarray]) -> np.ndarray:
    out = np.empty(len(rows), dtype=object)
    out[:] = rows  # one vlen write for all rows instead of one h5py call per row
    return out


# column names, as logs write them (RecBole's ``name:type`` is read as ``name``), by role
USER_NAMES = ("user_id", "userid", "user", "reviewerid", "customer_id")
ITEM_NAMES = ("item_id", "itemid", "item", "parent_asin", "asin", "movie_id", "product_id")
TIME_NAMES = ("timestamp", "time", "ts", "unix_time", "unixreviewtime")
HEADER_WORDS = {*USER_NAMES, *ITEM_NAMES, *TIME_NAMES, "rating", "label"}
MAX_TIME = 2.0**62  # seconds (or any unit) an int64 holds with room to spare


def read_interactions(path: str | Path, delimiter: str | None = None, user_col: int = 0,
                      item_col: int = 1, time_col: int | str | None = "auto",
                      ) -> tuple[list[str], list[str], np.ndarray | None]:
    """Read user, item[, time] columns from a CSV/TSV, JSON lines or Parquet, gzipped or not.

    A first row of column names (the fields of JSON lines and Parquet) picks the columns by name (``user_id``, ``item_id`` or
    ``parent_asin``, ``timestamp`` or ``time``; RecBole's ``name:type`` too), whatever their
    order; without one, the columns are ``user_col``, ``item_col`` and ``time_col`` ("auto":
    2). ``time_col`` may name a column; None: the file has no times. Users and items are kept
    as strings (ids such as ASINs), never empty; an item that is a negative integer is refused
    (-1 is the padding of histories). Times are finite numbers kept exactly (float64), so
    fractional times order the interactions as they are. Every refusal names file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: interactions file not found")
    from rqf_h5_recsys.records import table_rows

    users, items, times = [], [], []
    cols: tuple[int, int, int | None] | None = None
    for lineno, row in table_rows(path, delimiter):
        if not row or row[0].startswith("#"):
            continue
        if cols is None:
            # line 0: the field names of JSON lines or Parquet, a header whatever they are
            cols, header = _columns(path, row, user_col, item_col, time_col, lineno == 0)
            u, i, t = cols
            need = max(c for c in cols if c is not None)
            if header:
                continue
        if len(row) <= need:
            raise DataError(f"{path}: line {lineno}: expected at least {need + 1} "
                            f"columns, found {len(row)}")
        user, item = row[u].strip(), row[i].strip()
        if not user or not item:
            raise DataError(f"{path}: line {lineno}: the {'user' if not user else 'item'}"
                            " is empty")
        if item.lstrip("-").isdigit() and item.startswith("-"):
            raise DataError(f"{path}: line {lineno}: item {item}: ids are whole numbers "
                            "from 0 (-1 is the padding of histories)")
        users.append(user)
        items.append(item)
        if t is not None:
            times.append(_time(path, lineno, row[t]))
    if not users:
        raise DataError(f"{path}: no interactions found")
    return users, items, (np.array(times, np.float64) if cols and cols[2] is not None else None)


def _time(path: Path, lineno: int, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{path}: line {lineno}: the time must be a number, got "
                        f"{text[:40]!r}") from None
    if not np.isfinite(value) or abs(value) > MAX_TIME:
        raise DataError(f"{path}: line {lineno}: the time {text[:40]!r} is not a finite number "
                        f"within +-{MAX_TIME:.3g}")
    return value


def _columns(path: Path, row: list[str], user_col: int, item_col: int,
             time_col: int | str | None, named: bool = False
             ) -> tuple[tuple[int, int, int | None], bool]:
    """(user, item, time) columns and whether ``row`` is a header naming them (``named``:
    it is, whatever the names)."""
    names = [cell.split(":")[0].strip().lower() for cell in row]
    if not named and not any(name in HEADER_WORDS for name in names):
        if isinstance(time_col, str) and time_col != "auto":
            raise DataError(f"{path}: --time-column {time_col!r} names a column, but the file "
                            "has no header row")
        time = None if time_col is None else (2 if time_col == "auto" else int(time_col))
        return (user_col, item_col, time), False

    def find(choices: Sequence[str], what: str) -> int:
        for choice in choices:
            if choice in names:
                return names.index(choice)
        raise DataError(f"{path}: the header ({', '.join(row)}) has no {what} column "
                        f"(one of {', '.join(choices)})")

    user, item = find(USER_NAMES, "user"), find(ITEM_NAMES, "item")
    if time_col is None:
        return (user, item, None), True
    if time_col == "auto":
        found = [n for n in TIME_NAMES if n in names]
        if not found:
            raise DataError(f"{path}: the header ({', '.join(row)}) has no time column (one of "
                            f"{', '.join(TIME_NAMES)}); name it with --time-column, or pass "
                            "--no-timestamps")
        return (user, item, names.index(found[0])), True
    if isinstance(time_col, str) and not time_col.isdigit():
        if time_col.lower() not in names:
            raise DataError(f"{path}: --time-column {time_col!r} is not in the header "
                            f"({', '.join(row)})")
        return (user, item, names.index(time_col.lower())), True
    return (user, item, int(time_col)), True


def read_item_keys(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """(item ids, their string keys) of an item file: ``item_keys`` where the ids were
    numbered from strings, else the ids written as text."""
    from rqf_h5_recsys.storage import H5RecsysStorage

    with H5RecsysStorage(str(path)) as storage:  # the storage's own checked item_keys
        ids, keys = np.asarray(storage.item_ids, np.int64), storage.item_keys()
    return ids, keys if keys is not None else [str(i) for i in ids]


def _catalogue(items_file: str | Path | None, embeddings: str | Path | None,
               item_ids: str | Path | None, out_dir: Path
               ) -> tuple[dict[str, int] | None, dict[str, Path]]:
    """String key -> item id of the known items (None: any item), and what was written."""
    if items_file is not None:
        if embeddings is not None or item_ids is not None:
            raise DataError("--items names the item file; --embeddings and --item-ids write "
                            "one: give one or the other")
        ids, keys = read_item_keys(items_file)
        return dict(zip(keys, ids.tolist())), {}
    if embeddings is None:
        if item_ids is not None:
            raise DataError("--item-ids names the ids of --embeddings rows: give --embeddings")
        return None, {}
    emb = _load_npy(embeddings, "embeddings")
    raw = _load_npy(item_ids, "item_ids") if item_ids is not None else np.arange(len(emb))
    keys = [str(k) for k in raw.tolist()]
    numbered = raw.dtype.kind not in "iu"
    ids = np.arange(len(keys)) if numbered else raw.astype(np.int64)
    written = {"items": write_item_data(out_dir / "item_data.h5", ids, emb,
                                        item_keys=keys if numbered else None)}
    return dict(zip(keys, ids.tolist())), written


def from_interactions(interactions: str | Path, out_dir: str | Path,
                      embeddings: str | Path | None = None, item_ids: str | Path | None = None,
                      delimiter: str | None = None, time_col: int | str | None = "auto",
                      drop_unknown_items: bool = False,
                      items_file: str | Path | None = None, force: bool = False,
                      echo: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Build sequence.h5 (and item_data.h5 from an embeddings .npy) from an interaction file.

    Interactions are ordered by time per user with a stable sort, so ties keep file order.
    Item ids are mapped through ``items_file`` (an item_data.h5, e.g. from ``rqf recsys
    embed``: its ``item_keys`` or ids), or the ``item_ids`` .npy (strings are numbered 0..n-1
    and kept as ``item_keys``); without either, row i of the embeddings is item id i. With no
    item source at all, integer ids are kept and any other ids are numbered in order of first
    appearance, the keys kept in sequence.h5. An existing sequence.h5 (or item_data.h5 it
    would write) is replaced only with ``force``, and never one of the files it reads.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {out_dir}: a file; --out names the folder for sequence.h5")
    reads = [("is the file this command reads", Path(p))
             for p in (interactions, embeddings, item_ids, items_file) if p is not None]
    for name in ("sequence.h5", *(("item_data.h5",) if embeddings is not None else ())):
        check_output(out_dir / name, force, reads)
    users, raw_items, times = read_interactions(interactions, delimiter, time_col=time_col)
    if times is not None and (times != np.floor(times)).any() and echo is not None:
        echo(f"{interactions}: times with fractions order each user's items exactly; "
             "sequence.h5 keeps them as whole numbers (its timestamps are int64)")
    known, written = _catalogue(items_file, embeddings, item_ids, out_dir)
    seq_keys = None
    if known is None:
        items, seq_keys = _number(raw_items)
    else:
        items = np.fromiter((known.get(k, -1) for k in raw_items), np.int64, len(raw_items))
        unknown = items < 0
        if unknown.any():
            if not drop_unknown_items:
                examples = list(dict.fromkeys(k for k, u in zip(raw_items, unknown) if u))[:5]
                raise DataError(f"{interactions}: {int(unknown.sum())} interactions name items "
                                f"missing from the item file, e.g. {', '.join(examples)}")
            keep = ~unknown
            users = [u for u, k in zip(users, keep) if k]
            items = items[keep]
            times = times[keep] if times is not None else None
    written["sequences"] = _write_sequences(out_dir / "sequence.h5", users, items, times,
                                            len(known) if known is not None else None, seq_keys)
    return written


def numeric_ids(keys: Sequence[str]) -> np.ndarray | None:
    """The keys as int64 ids when every one is a plain integer, else None."""
    try:
        ids = np.array([int(k) for k in keys], np.int64)
    except (ValueError, OverflowError):
        return None
    return ids if all(str(i) == k for i, k in zip(ids.tolist(), keys)) else None


def _number(raw_items: list[str]) -> tuple[np.ndarray, list[str] | None]:
    """Integer ids as they are; other ids numbered 0.. in order of first appearance."""
    ids = numeric_ids(raw_items)
    if ids is not None:
        return ids, None
    keys = list(dict.fromkeys(raw_items))
    index = {k: i for i, k in enumerate(keys)}
    return np.fromiter((index[k] for k in raw_items), np.int64, len(raw_items)), keys


def _write_sequences(path: Path, users: list[str], items: np.ndarray, times: np.ndarray | None,
                     total_items: int | None, item_keys: list[str] | None) -> Path:
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
    ts = np.split(np.floor(times).astype(np.int64), bounds) if times is not None else None
    return write_sequence_data(path, [str(u) for u in user_order], seqs, ts,
                               total_items=total_items, item_keys=item_keys)


def _load_npy(path: str | Path, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file not found") from None
    except ValueError as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc})") from None
