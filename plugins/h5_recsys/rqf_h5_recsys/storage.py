"""The ``h5_recsys`` storage: an item file and, optionally, a sequence file."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from rqf import (KEYS_DATASET, DataError, InspectReport, Param, Storage, decode_keys, read_keys,
                 read_rows)
from rqf_h5_recsys.formats import (ItemMeta, Problems, SequenceTable, add_value_problems,
                                   bad_values, check_item_file, check_known_items, open_h5,
                                   read_sequence_file, rows_of)

IN_MEMORY_LIMIT = 1 << 30  # embeddings up to 1 GiB are read once; larger ones in slices


class H5RecsysStorage(Storage):
    """Item embeddings (item_data.h5) and user sequences (sequence.h5), validated on open."""

    name = "h5_recsys"
    params = (
        Param("items", "path", help="item_data.h5: item_ids, embeddings, features"),
        Param("sequences", "path", None, "sequence.h5: user_ids, sequences, timestamps",
              nullable=True),
        Param("drop_unknown_items", bool, False,
              "drop interactions whose item is not in the item file (with a warning) instead "
              "of failing"),
        Param("in_memory", bool, None,
              "read all embeddings at open (null: when they take at most 1 GiB)", nullable=True),
    )

    def __init__(self, items: str, sequences: str | None = None, drop_unknown_items: bool = False,
                 in_memory: bool | None = None) -> None:
        super().__init__(items=items, sequences=sequences)
        self.items_path = Path(items)
        self.sequences_path = Path(sequences) if sequences else None
        self.drop_unknown_items = drop_unknown_items
        self.in_memory = in_memory
        self.meta: ItemMeta | None = None
        self.table: SequenceTable | None = None
        self.sequence_rows: np.ndarray | None = None  # item row of every sequence position
        self.dropped_interactions = 0
        self._embeddings: np.ndarray | None = None
        self._features: tuple[np.ndarray, np.ndarray] | None = None
        self._values_checked = False
        self._file: h5py.File | None = None
        self._pid: int | None = None

    # -- opening and handles --------------------------------------------------------------
    def open(self) -> "H5RecsysStorage":
        with open_h5(self.items_path) as f:
            meta, probs = check_item_file(f, self.items_path, check_values=False)
        probs.raise_first()
        assert meta is not None
        self.meta = meta
        self._values_checked = False
        if self.sequences_path is not None:
            self._open_sequences()
        return self

    def _load_values(self) -> None:
        """Read the embedding values into memory when they take at most 1 GiB, and check
        them, once, at their first use: a view that reads no embedding (a model over item ids
        alone) never reads them. A larger file is not read whole to check it: every read
        checks the rows it returns (``_checked``)."""
        if self._values_checked:
            return
        meta = self._meta()
        with open_h5(self.items_path) as f:
            whole = None
            if self.in_memory or (self.in_memory is None
                                  and meta.n_items * meta.embedding_dim * 4 <= IN_MEMORY_LIMIT):
                try:
                    whole = f["embeddings"][()].astype(np.float32, copy=False)
                except OSError:
                    whole = None  # unreadable: the checks below say why
            _, probs = check_item_file(f, self.items_path, embeddings=whole,
                                       check_values=whole is not None)
            probs.raise_first()
            if whole is not None:
                self._embeddings = whole
                if meta.has_features:
                    self._features = (f["features"][()].astype(np.int32),
                                      f["feature_lengths"][()].astype(np.int32))
        self._values_checked = True

    def _open_sequences(self) -> None:
        assert self.meta is not None and self.sequences_path is not None
        with open_h5(self.sequences_path) as f:
            table, probs = read_sequence_file(f, self.sequences_path)
        if table is not None:
            rows = check_known_items(table, self.meta.item_ids, self.sequences_path, probs)
            unknown = rows < 0
            if unknown.any() and self.drop_unknown_items:
                probs.items = [p for p in probs.items if "not in the item file" not in p]
                table, rows = _drop_positions(table, rows, unknown)
                self.dropped_interactions = int(unknown.sum())
                warnings.warn(f"{self.sequences_path}: dropped {self.dropped_interactions} "
                              "interactions with unknown items", stacklevel=2)
                if (table.lengths == 0).any():
                    probs.add("sequences", f"{int((table.lengths == 0).sum())} sequences are empty "
                              "after dropping unknown items")
            self.sequence_rows = rows
        probs.raise_first()
        self.table = table

    def _handle(self) -> h5py.File:
        # h5py handles must not cross fork: reopen in every process that reads
        if self._file is None or self._pid != os.getpid():
            self._file = open_h5(self.items_path)
            self._pid = os.getpid()
        return self._file

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None
        self._pid = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state

    # -- reading --------------------------------------------------------------------------
    def item_keys(self) -> list[str] | None:
        """``item_keys`` of the item file, else those sequence.h5 kept when it numbered string
        ids (key i is item id i); None when neither has keys."""
        if "_keys" not in self.__dict__:
            ids = self.item_ids
            with open_h5(self.items_path) as f:
                keys = read_keys(f, len(ids), self.items_path)
            if keys is None and self.sequences_path is not None:
                with open_h5(self.sequences_path) as f:
                    if KEYS_DATASET in f:
                        numbered = decode_keys(f[KEYS_DATASET][()])
                        if len(ids) and ids.min() >= 0 and ids.max() < len(numbered):
                            keys = [numbered[i] for i in ids.tolist()]
            self._keys = keys
        return self._keys

    @property
    def item_ids(self) -> np.ndarray:
        return self._meta().item_ids

    @property
    def embedding_dim(self) -> int:
        return self._meta().embedding_dim

    @property
    def has_timestamps(self) -> bool:
        return self.table is not None and self.table.timestamps is not None

    def _meta(self) -> ItemMeta:
        if self.meta is None:
            raise DataError(f"{self.items_path}: storage used before open()")
        return self.meta

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        return rows_of(self.item_ids, np.asarray(ids, dtype=np.int64))

    def read_embeddings(self, rows: np.ndarray) -> np.ndarray:
        """Embeddings of ``rows`` (any order, repeats allowed) as float32."""
        rows = np.asarray(rows, dtype=np.int64)
        self._load_values()
        if self._embeddings is not None:
            return self._embeddings[rows]
        # slices for dense runs of rows, one sorted selection for the scattered rest
        return self._checked(read_rows(self._read_range, rows,
                                       read_sorted=self._read_embedding_rows), rows)

    def _read_embedding_rows(self, rows: np.ndarray) -> np.ndarray:
        return self._handle()["embeddings"][rows].astype(np.float32, copy=False)

    def _read_range(self, start: int, stop: int) -> np.ndarray:
        return self._handle()["embeddings"][start:stop].astype(np.float32, copy=False)

    def read_embedding_range(self, start: int, stop: int) -> np.ndarray:
        self._load_values()
        if self._embeddings is not None:
            return self._embeddings[start:stop]
        return self._checked(self._read_range(start, stop), np.arange(start, stop))

    def _checked(self, block: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``block`` (read from the file, the embeddings of ``rows``) when its values are
        usable; otherwise the error names the first bad row and its item id."""
        bad, huge, peak = bad_values(block, rows)
        if len(bad) or len(huge):
            probs = Problems(Path(self.items_path))
            add_value_problems(bad, huge, peak, self.item_ids, probs)
            probs.raise_first()
        return block

    def read_features(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        meta = self._meta()
        rows = np.asarray(rows, dtype=np.int64)
        if not meta.has_features or meta.max_feature_len == 0:
            # a zero-width dataset cannot take a fancy selection in h5py; nothing to read anyway
            return (np.zeros((len(rows), meta.max_feature_len), np.int32),
                    np.zeros(len(rows), np.int32))
        if self._features is not None:
            return self._features[0][rows], self._features[1][rows]
        f = self._handle()
        return (read_rows(lambda a, b: f["features"][a:b], rows).astype(np.int32),
                read_rows(lambda a, b: f["feature_lengths"][a:b], rows).astype(np.int32))

    def describe(self) -> dict[str, Any]:
        meta = self._meta()
        info: dict[str, Any] = {"n_items": meta.n_items, "embedding_dim": meta.embedding_dim,
                                "items": str(self.items_path)}
        if self.table is not None:
            info.update(n_sequences=len(self.table), n_interactions=int(self.table.offsets[-1]),
                        has_timestamps=self.has_timestamps, sequences=str(self.sequences_path))
            if self.dropped_interactions:
                info["dropped_unknown_interactions"] = self.dropped_interactions
        return info

    # -- inspect --------------------------------------------------------------------------
    @classmethod
    def recognizes(cls, path: Path) -> bool:
        path = Path(path)
        if not path.is_file():
            return False
        if not h5py.is_hdf5(path):
            return path.suffix.lower() in (".h5", ".hdf5")
        try:
            with h5py.File(path, "r") as f:
                return any(k in f for k in ("item_ids", "embeddings", "sequences", "user_ids"))
        except OSError:
            return True

    @classmethod
    def for_path(cls, path: Path) -> "H5RecsysStorage":
        return cls(items=str(path))

    @classmethod
    def inspect(cls, path: Path, full: bool = False) -> InspectReport:
        from rqf_h5_recsys.inspection import inspect_file

        # every embedding value is read (streamed in chunks) with or without full
        return inspect_file(Path(path))


def _drop_positions(table: SequenceTable, rows: np.ndarray,
                    drop: np.ndarray) -> tuple[SequenceTable, np.ndarray]:
    keep = ~drop
    owner = np.repeat(np.arange(len(table)), table.lengths)
    new_lengths = np.bincount(owner[keep], minlength=len(table))
    offsets = np.zeros(len(table) + 1, np.int64)
    np.cumsum(new_lengths, out=offsets[1:])
    ts = table.timestamps[keep] if table.timestamps is not None else None
    return SequenceTable(table.user_ids, offsets, table.item_ids[keep], ts), rows[keep]
