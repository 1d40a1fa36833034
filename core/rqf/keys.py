"""Items by their own keys: the string ids (ASINs) a catalogue arrives with, beside the whole
numbers rqf trains on.

Where the data was numbered from strings (``rqf recsys embed`` or ``from-interactions`` over
ASINs) its files keep ``item_keys``; a tokenizer copies them into ``semantic_ids.h5``, and every
command that takes or prints items accepts and prints them (``rqf recommend``, ``rqf ids
lookup | export | import``). ``ItemKeys`` is the two-way map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from rqf.errors import DataError

KEYS_DATASET = "item_keys"


def decode_keys(raw: Iterable[Any]) -> list[str]:
    return [k.decode() if isinstance(k, bytes) else str(k) for k in raw]


def check_keys(keys: Sequence[str], n: int, where: str) -> list[str]:
    """``keys`` as a list of n distinct, non-empty strings, or a one-line refusal."""
    keys = [str(k) for k in keys]
    if len(keys) != n:
        raise DataError(f"{where}: {KEYS_DATASET} has {len(keys)} entries for {n} items")
    if any(not k for k in keys):
        raise DataError(f"{where}: {KEYS_DATASET} holds an empty key (row {keys.index('')})")
    if len(set(keys)) != n:
        seen: set[str] = set()
        twice = next(k for k in keys if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise DataError(f"{where}: {KEYS_DATASET} holds {twice!r} twice")
    return keys


class ItemKeys:
    """Item ids and, where the data has them, their keys (else each id is its own key)."""

    def __init__(self, ids: np.ndarray, keys: Sequence[str] | None, where: str = "") -> None:
        self.ids = np.asarray(ids, np.int64)
        self.where = where
        self.keys = check_keys(keys, len(self.ids), where) if keys is not None else None
        self._id_of = {k: int(i) for k, i in zip(self.keys, self.ids)} if self.keys else {}
        self._key_of = {int(i): k for k, i in zip(self.keys, self.ids)} if self.keys else {}

    @property
    def has_keys(self) -> bool:
        return self.keys is not None

    def key_of(self, item_id: int) -> str:
        """The item's key (its id as text when the data has no keys)."""
        return self._key_of.get(int(item_id), str(int(item_id)))

    def id_of(self, token: str, where: str) -> int:
        """The id of an item named by its key, or by its id; a one-line refusal otherwise."""
        token = token.strip()
        if token in self._id_of:
            return self._id_of[token]
        if token.isdigit() and (not self.keys or int(token) in self._key_of):
            return int(token)
        what = "key" if self.keys else "id"
        raise DataError(f"{where}: {token[:40]!r} is not an item {what} of {self.where}")

    def ids_of(self, text: str, where: str) -> list[int]:
        """The ids of a comma-separated list of keys (or ids), oldest first."""
        parts = [p for p in (part.strip() for part in text.split(","))]
        if parts == [""] or "" in parts:
            raise DataError(f"{where}: an empty item in {text[:60]!r}; give items separated by "
                            "commas, e.g. B00X1,B00X2")
        return [self.id_of(p, where) for p in parts]


def write_keys(f: Any, keys: Sequence[str] | None) -> None:
    """``item_keys`` into an open h5py file, as variable-length UTF-8 strings."""
    if keys is None:
        return
    import h5py

    f.create_dataset(KEYS_DATASET, data=np.array([str(k) for k in keys], dtype=object),
                     dtype=h5py.string_dtype("utf-8"))


def read_keys(f: Any, n: int, path: Path | str) -> list[str] | None:
    """``item_keys`` of an open h5py file (None when it has none), checked."""
    if KEYS_DATASET not in f:
        return None
    return check_keys(decode_keys(f[KEYS_DATASET][()]), n, str(path))
