"""A batch API with the seed guide's signature, on top of the plugin's datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from rqf import ConfigError
from rqf_h5_recsys.datasets import SequencesDataset
from rqf_h5_recsys.splitters import AutoSplitter, LeaveLastOutSplitter, TemporalSplitter
from rqf_h5_recsys.storage import H5RecsysStorage

_SPLITTERS = {"auto": AutoSplitter, "leave_last_out": LeaveLastOutSplitter,
              "temporal": TemporalSplitter}


class SequenceBatch(dict):
    """A batch read as the seed guide writes it (``batch.x``, ``batch.user_ids``) or as a
    dict (``batch["x"]``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"a batch has no {name!r}; it has {', '.join(self)}") from None


def collate(samples: list[dict[str, Any]]) -> SequenceBatch:
    """A batch as the seed guide's loader makes it: ``user_ids`` is an int64 tensor (batch,)
    holding each sequence's row in sequence.h5; ``user_names`` keeps the string ids stored
    there, in the same order."""
    batch = SequenceBatch(user_ids=torch.tensor([s["user_row"] for s in samples], dtype=torch.int64),
                          user_names=[s["user_id"] for s in samples])
    for key in ("ids", "mask", "x", "timestamps"):
        if key in samples[0]:
            batch[key] = torch.from_numpy(np.stack([s[key] for s in samples]))
    batch["lengths"] = torch.tensor([s["length"] for s in samples])
    batch["target"] = torch.tensor([s["target"] for s in samples])
    return batch


def create_h5_dataloader(item_data_path: str | Path, sequence_data_path: str | Path,
                         batch_size: int = 32, max_seq_len: int = 200,
                         train_test_split: str = "train", shuffle: bool = True,
                         splitter: str = "auto", num_workers: int = 0, seed: int = 0,
                         **splitter_params: Any) -> DataLoader:
    """Batches of ``user_ids``, ``user_names``, ``ids``, ``x``, ``mask``, ``lengths`` and
    ``target``, read as attributes (``batch.x``) or keys (``batch["x"]``).

    ``user_ids`` is an int64 tensor (batch,): each sequence's row in ``sequence.h5``, as in
    the seed guide; ``user_names`` is the list of the string ids stored in that file.

    ``train_test_split`` picks the split: ``train``, ``valid``, ``test`` or ``all`` (every
    full sequence, target -1). ``splitter`` is ``auto`` (the seed's rule), ``leave_last_out``
    or ``temporal``.
    """
    storage = H5RecsysStorage(str(item_data_path), str(sequence_data_path)).open()
    data = SequencesDataset(storage, max_seq_len=max_seq_len)
    if train_test_split == "all":
        view = data
    else:
        if splitter not in _SPLITTERS:
            raise ConfigError(f"splitter: expected one of {sorted(_SPLITTERS)}, got {splitter!r}")
        splits = _SPLITTERS[splitter](seed=seed, **splitter_params).split(data)
        if train_test_split not in splits:
            raise ConfigError(f"train_test_split: expected one of {sorted(splits) + ['all']}, "
                              f"got {train_test_split!r}")
        view = splits[train_test_split]
    return DataLoader(view, batch_size=batch_size, shuffle=shuffle, collate_fn=collate,
                      num_workers=num_workers, persistent_workers=num_workers > 0)
