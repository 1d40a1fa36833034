"""Normalisation statistics of a cache's features: per-dimension mean and variance, read the
way MaskGCT's tools apply them, ``(x - mean) / sqrt(var)``.

A cache keeps them beside its shards as ``feature_stats.npz`` (``mean``, ``var``, ``std``,
``frames``, ``utterances``, ``feature``); a dataset with ``normalize: true`` and no
``stats_file`` reads them from there. A statistics file given by hand may be such an ``.npz``
(``mean`` with ``std`` or ``var``) or a torch file holding a dict with ``mean`` and ``var``
(as MaskGCT ships ``wav2vec2bert_stats.pt``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rqf import DataError, atomic_path

STATS_NAME = "feature_stats.npz"


def read_stats(path: Path | str, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) as float32 from a statistics file of either kind, width-checked."""
    path = Path(path)
    try:
        if path.suffix in (".pt", ".pth"):
            import torch

            raw = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(raw, dict):
                raise ValueError(f"holds a {type(raw).__name__}, not a dict")
            values = {k: np.asarray(v.float().numpy() if hasattr(v, "numpy") else v)
                      for k, v in raw.items() if k in ("mean", "var", "std")}
        else:
            with np.load(path) as z:
                values = {k: np.asarray(z[k]) for k in ("mean", "var", "std") if k in z.files}
    except FileNotFoundError:
        raise DataError(f"{path}: statistics file not found") from None
    except Exception as exc:
        raise DataError(f"{path}: not a statistics file ({type(exc).__name__}: {exc})") from None
    if "mean" not in values or not ({"std", "var"} & set(values)):
        raise DataError(f"{path}: a statistics file holds mean and std (or var); found "
                        f"{', '.join(sorted(values)) or 'neither'}")
    mean = values["mean"].astype(np.float32).reshape(-1)
    std = values["std"] if "std" in values else np.sqrt(np.maximum(values["var"], 0))
    std = np.asarray(std, dtype=np.float32).reshape(-1)
    if mean.shape != std.shape:
        raise DataError(f"{path}: mean has {mean.size} values, std/var {std.size}")
    if dim is not None and mean.shape != (dim,):
        raise DataError(f"{path}: statistics are for {mean.size} features, the cache has {dim}")
    if not (np.isfinite(mean).all() and np.isfinite(std).all()) or (std <= 0).any():
        raise DataError(f"{path}: statistics hold NaN, Inf or a zero spread")
    return mean, std


class RunningStats:
    """Per-dimension sums in float64, one sample at a time."""

    def __init__(self) -> None:
        self.total: np.ndarray | None = None
        self.total_sq: np.ndarray | None = None
        self.frames = 0
        self.utterances = 0

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        if self.total is None:
            self.total, self.total_sq = np.zeros(x.shape[1]), np.zeros(x.shape[1])
        self.total += x.sum(0)
        self.total_sq += (x * x).sum(0)
        self.frames += len(x)
        self.utterances += 1

    def mean_var(self) -> tuple[np.ndarray, np.ndarray]:
        assert self.total is not None and self.total_sq is not None and self.frames
        mean = self.total / self.frames
        return mean, np.maximum(self.total_sq / self.frames - mean * mean, 1e-12)


def save_stats(path: Path, stats: RunningStats, **meta: Any) -> Path:
    mean, var = stats.mean_var()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, mean=mean.astype(np.float32), var=var.astype(np.float32),
                     std=np.sqrt(var).astype(np.float32), frames=stats.frames,
                     utterances=stats.utterances, **{k: np.asarray(v) for k, v in meta.items()})
    return path


def cache_stats(directory: Path, feature: str = "hidden_states",
                utterances: int | None = None) -> RunningStats:
    """Statistics of ``feature`` over a cache: every utterance, or ``utterances`` of them
    spread evenly over its keys; one streaming pass, one sample in memory at a time."""
    from rqf_h5_speech.storage import H5ShardedStorage

    storage = H5ShardedStorage(str(directory)).open()
    try:
        n = len(storage.keys)
        rows = range(n) if utterances is None or utterances >= n else \
            np.unique(np.linspace(0, n - 1, utterances).round().astype(int))
        stats = RunningStats()
        for row in rows:
            arrays = storage.arrays_at(int(row))
            values = arrays.read(feature)
            if not np.isfinite(values).all():
                raise DataError(f"{directory}: sample {arrays.key!r}: {feature} holds NaN or Inf")
            stats.add(values)
    finally:
        storage.close()
    if not stats.frames:
        raise DataError(f"{directory}: no frames to compute statistics from")
    return stats


def stored_stats(directory: Path, feature: str, dim: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The statistics a cache keeps for ``feature``, or None when it keeps none for it."""
    path = Path(directory) / STATS_NAME
    if not path.is_file():
        return None
    with np.load(path) as z:
        kept_for = str(z["feature"]) if "feature" in z.files else "hidden_states"
    if kept_for != feature:
        return None
    return read_stats(path, dim)
