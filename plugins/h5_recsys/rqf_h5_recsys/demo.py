"""Demo item and sequence files with the shape of real data: clustered item embeddings,
power-law popularity, users who stay near a few interests, and timestamps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rqf import RqfError
from rqf_h5_recsys.writer import write_item_data, write_sequence_data

DEMO_SOURCE = "rqf demo"  # the files' "source" attribute: what rqf demo may replace unasked
FILES = ("item_data.h5", "sequence.h5", "sequence_no_time.h5")


def check_demo(directory: Path, force: bool) -> None:
    """Refuse to replace a file of the demo's names that rqf demo did not write (unless
    ``force``); a folder of such a name is never replaced."""
    import h5py

    for name in FILES:
        path = Path(directory) / name
        if path.is_dir() or path.is_symlink():
            raise RqfError(f"{path}: a folder or link where rqf demo writes a file; choose "
                           "another folder for the demo data")
        if not path.exists() or force:
            continue
        try:
            with h5py.File(path, "r") as f:
                ours = f.attrs.get("source") == DEMO_SOURCE
        except OSError:
            ours = False
        if not ours:
            raise RqfError(f"{path}: exists and is not demo data rqf wrote; pass --force to "
                           "replace it, or choose another folder")


def make_demo(directory: Path, seed: int = 0, n_items: int = 4000, n_users: int = 1500,
              dim: int = 64, n_topics: int = 40) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    topic_centers = rng.normal(size=(n_topics, dim))
    topic_of_item = rng.integers(0, n_topics, n_items)
    sub_centers = topic_centers[topic_of_item] + 0.6 * rng.normal(size=(n_items, dim))
    emb = sub_centers + 0.35 * rng.normal(size=(n_items, dim))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    item_ids = np.arange(1, n_items + 1, dtype=np.int64)
    # popularity: Zipf-like weights over a random order of items
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.9
    popularity = popularity[rng.permutation(n_items)]
    features = np.stack([topic_of_item + 1, rng.integers(1, 200, n_items)], axis=1)
    by_topic = [np.flatnonzero(topic_of_item == t) for t in range(n_topics)]
    users, sequences, times = [], [], []
    start_time = 1_600_000_000
    for u in range(n_users):
        length = int(np.clip(rng.lognormal(2.6, 0.7), 3, 300))
        interests = rng.choice(n_topics, size=rng.integers(1, 4), replace=False)
        pool = np.concatenate([by_topic[t] for t in interests])
        weights = popularity[pool] / popularity[pool].sum()
        picks = rng.choice(pool, size=length, p=weights)
        explore = rng.random(length) < 0.15
        picks[explore] = rng.choice(n_items, size=int(explore.sum()), p=popularity / popularity.sum())
        t0 = start_time + int(rng.integers(0, 150 * 86400))
        gaps = rng.exponential(86400 * 4, size=length).astype(np.int64)
        users.append(f"u{u:05d}")
        sequences.append(item_ids[picks])
        times.append(t0 + np.cumsum(gaps))
    directory = Path(directory)
    return {
        "item_data": write_item_data(directory / "item_data.h5", item_ids, emb.astype(np.float32),
                                     features.astype(np.int32), np.full(n_items, 2, np.int32),
                                     attrs={"source": DEMO_SOURCE}),
        "sequences": write_sequence_data(directory / "sequence.h5", users, sequences, times,
                                         total_items=n_items, attrs={"source": DEMO_SOURCE}),
        # the same users without timestamps, as Amazon-style benchmarks ship them
        "sequences_without_time": write_sequence_data(directory / "sequence_no_time.h5", users,
                                                      sequences, None, total_items=n_items,
                                                      attrs={"source": DEMO_SOURCE}),
    }
