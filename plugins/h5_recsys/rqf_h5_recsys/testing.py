"""Test helpers for anything that reads item_data.h5 / sequence.h5, loaded by pytest as a
plugin (entry point ``pytest11``) wherever this package is installed.

``write_seed_items`` / ``write_seed_sequences`` write files the way the original preprocessing
does (plain h5py), so tests read what users' files hold; the ``recsys_files`` fixture is a
small pair of them; ``recsys_pipeline`` a pipeline mapping over them that trains in seconds.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from rqf.testing import clustered


def write_seed_items(path: Path, item_ids, embeddings, features=None, lengths=None, **attrs):
    """An item file written the way the original preprocessing writes it (plain h5py)."""
    n = len(item_ids)
    features = np.zeros((n, 4), np.int32) if features is None else features
    lengths = np.zeros(n, np.int32) if lengths is None else lengths
    with h5py.File(path, "w") as f:
        f.create_dataset("item_ids", data=np.asarray(item_ids, np.int64))
        f.create_dataset("embeddings", data=np.asarray(embeddings, np.float32))
        f.create_dataset("features", data=features)
        f.create_dataset("feature_lengths", data=lengths)
        f.attrs["n_items"] = attrs.get("n_items", n)
        f.attrs["embedding_dim"] = attrs.get("embedding_dim", np.asarray(embeddings).shape[1])
        f.attrs["max_feature_len"] = features.shape[1]
        f.attrs["original_order_preserved"] = True
    return path


def write_seed_sequences(path: Path, user_ids, sequences, timestamps=None, lengths=None):
    """A sequence file written the way the original preprocessing writes it."""
    with h5py.File(path, "w") as f:
        f.create_dataset("user_ids", data=np.array(user_ids, dtype=object),
                         dtype=h5py.string_dtype())
        ds = f.create_dataset("sequences", (len(sequences),), dtype=h5py.vlen_dtype(np.int64))
        for i, s in enumerate(sequences):
            ds[i] = np.asarray(s, np.int64)
        f.create_dataset("sequence_lengths", data=np.array(
            lengths if lengths is not None else [len(s) for s in sequences], np.int32))
        if timestamps is not None:
            ts = f.create_dataset("timestamps", (len(timestamps),), dtype=h5py.vlen_dtype(np.int64))
            for i, t in enumerate(timestamps):
                ts[i] = np.asarray(t, np.int64)
        f.attrs["n_sequences"] = len(sequences)
        f.attrs["max_sequence_length"] = max(len(s) for s in sequences)
        f.attrs["total_items"] = len({i for s in sequences for i in s})
        f.attrs["avg_sequence_length"] = float(np.mean([len(s) for s in sequences]))
        f.attrs["order_preserved"] = True
    return path


@pytest.fixture
def recsys_files(tmp_path: Path) -> dict[str, Path]:
    """300 items (ids 101..400, 16-d) and 60 users with timestamps, lengths 1..12."""
    rng = np.random.default_rng(1)
    ids = np.arange(101, 401)
    items = write_seed_items(tmp_path / "item_data.h5", ids, clustered(300, 16, 8))
    users, seqs, times = [], [], []
    for u in range(60):
        n = 1 + u % 12
        users.append(f"user{u}")
        seqs.append(rng.choice(ids, size=n, replace=False))
        times.append(1000 + u * 10 + np.cumsum(rng.integers(0, 50, n)))
    seq = write_seed_sequences(tmp_path / "sequence.h5", users, seqs, times)
    return {"items": items, "sequences": seq, "dir": tmp_path}


def recsys_pipeline(files: dict[str, Path], out: Path, **sections) -> dict:
    config = {
        "name": "tiny",
        "output_dir": str(out),
        "seed": 0,
        "storage": {"type": "h5_recsys", "items": str(files["items"]),
                    "sequences": str(files["sequences"])},
        "dataset": {"type": "items"},
        "splitter": {"type": "index", "test_ratio": 0.2, "valid_ratio": 0.1},
        "model": {"type": "rqvae", "levels": 2, "codebook_size": 16, "latent_dim": 8,
                  "hidden_dims": [32], "kmeans_samples": 4096},
        "train": {"epochs": 3, "batch_size": 64, "progress": False, "checkpoint_every": 0},
    }
    for key, value in sections.items():
        same_type = not isinstance(value, dict) or value.get("type") in (None, config.get(key, {}).get("type"))
        if isinstance(value, dict) and isinstance(config.get(key), dict) and same_type:
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config
