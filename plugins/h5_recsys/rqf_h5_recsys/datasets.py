"""The ``items`` and ``sequences`` datasets over an ``h5_recsys`` storage."""

from __future__ import annotations

from typing import Any

import numpy as np

from rqf import (ConfigError, Dataset, ItemRows, ItemVectors, Param, SequenceRecords,
                 SequenceSource, all_items, input_positions, positions, require)


def _require(storage: Any, dataset: str, protocol: type) -> Any:
    return require(storage, protocol, "dataset.type", repr(dataset))


class ItemsDataset(ItemRows):
    """One sample per item: its id, embedding and feature tokens."""

    name = "items"
    params = ()

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        samples = super().__getitems__(indices)
        features, lengths = self.storage.read_features(self.rows[np.asarray(indices, np.int64)])
        for i, sample in enumerate(samples):
            sample.update(features=features[i], feature_length=int(lengths[i]))
        return samples


class SequencesDataset(Dataset):
    """One sample per user: the most recent max_seq_len items, padded, with their embeddings."""

    name = "sequences"
    sample_unit = "users"
    params = (
        Param("max_seq_len", int, 200, "keep the most recent items of each input", min=1),
    )

    def __init__(self, storage: SequenceSource, max_seq_len: int = 200,
                 records: SequenceRecords | None = None, role: str = "all") -> None:
        super().__init__(_require(storage, "sequences", SequenceSource), max_seq_len=max_seq_len)
        self.storage: SequenceSource = storage
        self.table = storage.table
        self.max_seq_len = max_seq_len
        self.role = role
        self._records = records
        if records is None and self.table is not None:
            n = len(self.table)
            self._records = SequenceRecords.build(np.arange(n), np.zeros(n), self.table.lengths,
                                                  np.full(n, -1))

    @property
    def records(self) -> SequenceRecords:
        # Without a sequence file the view can still export every item (encoding a new item
        # file with a run trained on sequences); anything that reads sequences stops here.
        if self._records is None:
            raise ConfigError("dataset.type: 'sequences' needs storage.sequences (a sequence.h5); "
                              "to read items alone use dataset.type: items")
        return self._records

    def with_records(self, records: SequenceRecords, role: str) -> "SequencesDataset":
        return SequencesDataset(self.storage, self.max_seq_len, records, role)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        # a DataLoader batch: one embedding read for every item of every sequence in it
        r = self.records
        idx = np.asarray(indices, dtype=np.int64)
        end = r.end[idx]
        start = np.maximum(r.start[idx], end - self.max_seq_len)
        base = self.table.offsets[r.user[idx]]
        lengths = end - start
        from_pos = base + start
        flat = positions(from_pos, lengths)
        vectors = self.storage.read_embeddings(self.storage.sequence_rows[flat]) if len(flat) \
            else np.zeros((0, self.storage.embedding_dim), np.float32)
        bounds = np.r_[0, np.cumsum(lengths)]
        samples = []
        for j, i in enumerate(idx):
            n = int(lengths[j])
            ids = np.zeros(self.max_seq_len, np.int64)
            ids[:n] = self.table.item_ids[from_pos[j]:from_pos[j] + n]
            mask = np.zeros(self.max_seq_len, bool)
            mask[:n] = True
            x = np.zeros((self.max_seq_len, self.storage.embedding_dim), np.float32)
            x[:n] = vectors[bounds[j]:bounds[j + 1]]
            target = int(r.target[i])
            sample = {"user_id": self.table.user_ids[r.user[i]], "user_row": int(r.user[i]),
                      "ids": ids, "mask": mask,
                      "x": x, "length": n,
                      "target": int(self.table.item_ids[base[j] + target]) if target >= 0 else -1}
            if self.table.timestamps is not None:
                ts = np.zeros(self.max_seq_len, np.int64)
                ts[:n] = self.table.timestamps[from_pos[j]:from_pos[j] + n]
                sample["timestamps"] = ts
            samples.append(sample)
        return samples

    def describe(self) -> dict[str, Any]:
        info = {"input_dim": self.storage.embedding_dim, "unit": "item",
                "max_seq_len": self.max_seq_len, **self.storage.describe()}
        if self._records is not None:
            lengths = self._records.end - self._records.start
            # user_sequences: the training view is a SequenceView (tokenizers learn their
            # collaborative view from it)
            info.update(n_samples=len(self), user_sequences=True,
                        mean_input_length=float(lengths.mean()) if len(lengths) else 0.0)
        return info

    def input_positions(self) -> np.ndarray:
        """Flat positions (into the storage's sequence arrays) of every input item."""
        return input_positions(self)

    def target_positions(self) -> np.ndarray:
        """Flat positions of the held-out targets of this view (records with one)."""
        r = self.records
        has = r.target >= 0
        return self.table.offsets[r.user[has]] + r.target[has]

    def vectors(self) -> np.ndarray:
        return self.storage.read_embeddings(self.export_rows())

    def export_rows(self) -> np.ndarray:
        # Training views: every item in the inputs, once (what the split lets a model see).
        # Evaluation views: the held-out target items, which training may never have seen.
        pos = self.input_positions() if self.role in ("train", "all") else self.target_positions()
        return np.unique(self.storage.sequence_rows[pos])

    def subset(self, indices: np.ndarray, role: str = "train") -> "SequencesDataset":
        r = self.records
        idx = np.asarray(indices, dtype=np.int64)
        user, start, end = r.user[idx], r.start[idx], r.end[idx]
        if role == "train":
            return self.with_records(SequenceRecords.build(user, start, end, r.target[idx]), role)
        # held-out users are evaluated on their last item from the rest of their sequence
        has_target = end - start >= 2
        new_end = np.where(has_target, end - 1, end)
        target = np.where(has_target, end - 1, -1)
        return self.with_records(SequenceRecords.build(user, start, new_end, target), role)

    def key_ids(self) -> np.ndarray:
        return self.records.user

    def export_source(self) -> ItemVectors:
        return all_items(self.storage)
