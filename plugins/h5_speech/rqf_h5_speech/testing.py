"""Test helpers for anything that reads a sharded speech cache, loaded by pytest as a plugin
(entry point ``pytest11``) wherever this package is installed: the ``speech_cache`` fixture (12
utterances of 4 speakers), ``original_cache`` (a cache laid out as the original preprocessing
tool writes it, with ``write_like_original``) and ``speech_pipeline``, a two-level token pipeline
over a cache."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest


@pytest.fixture
def speech_cache(tmp_path: Path) -> Path:
    """12 utterances (4 speakers x 3), 16-d hidden states and an 80-bin mel one frame longer."""
    from rqf_h5_speech import ShardedCacheWriter

    rng = np.random.default_rng(0)
    with ShardedCacheWriter(tmp_path / "cache", samples_per_file=5, num_workers=0) as w:
        for spk in range(4):
            for u in range(3):
                t = 20 + 7 * u + spk
                w.write(f"{spk}/{u}", {"hidden_states": rng.normal(size=(t, 16)).astype(np.float32),
                                       "mel_spectrogram": rng.normal(size=(1, t + 1, 80))
                                       .astype(np.float32)})
    return tmp_path / "cache"


def speech_pipeline(cache: Path, out: Path) -> dict:
    """Two-level tokens over a small speech cache, split by speaker."""
    return {"output_dir": str(out),
            "storage": {"type": "h5_sharded", "processed_dir": str(cache)},
            "dataset": {"type": "speech_frames", "normalize": True},
            "splitter": {"type": "speaker", "test_ratio": 0.25, "valid_ratio": 0.0},
            "model": {"type": "rqvae", "levels": 2, "codebook_size": 8, "latent_dim": 4,
                      "hidden_dims": [16]},
            "train": {"epochs": 3, "batch_size": 32, "progress": False}}


KEYS = [f"train-clean-100/{spk}/{ch}/{spk}_{ch}_{u}" for spk in (11, 12, 13, 14)
        for ch in (1,) for u in range(3)]


def sample(rng, t: int, dim: int = 16) -> dict[str, np.ndarray]:
    return {"hidden_states": rng.normal(size=(t, dim)).astype(np.float32),
            "mel_spectrogram": rng.normal(size=(1, t + 1, 80)).astype(np.float32)}


def write_like_original(directory: Path, samples: dict, per_file: int = 5, float16: bool = True):
    """The original preprocessing tool's layout: nested groups, gzip 4, JSON index."""
    directory.mkdir(parents=True, exist_ok=True)
    index, file_idx, count, f = {}, 0, 0, None
    for key, arrays in samples.items():
        if f is None or count >= per_file:
            if f is not None:
                f.close()
            file_idx, count = file_idx + 1, 0
            f = h5py.File(directory / f"features_{file_idx:05d}.h5", "a")
        group = f.create_group(key)
        for name, value in arrays.items():
            group.create_dataset(name, data=value.astype(np.float16) if float16 else value,
                                 compression="gzip", compression_opts=4)
        index[key] = {"file_idx": file_idx, "group_name": key}
        count += 1
    f.close()
    (directory / "hdf5_index.json").write_text(json.dumps({
        "sample_index": index, "current_file_idx": file_idx, "current_file_count": count,
        "samples_per_file": per_file, "use_float16": float16}, indent=2))
    return directory


@pytest.fixture
def original_cache(tmp_path):
    rng = np.random.default_rng(0)
    samples = {k: sample(rng, 20 + 7 * i) for i, k in enumerate(KEYS)}
    return write_like_original(tmp_path / "cache", samples), samples
