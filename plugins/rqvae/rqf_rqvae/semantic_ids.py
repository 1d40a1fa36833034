"""Semantic IDs: code tuples per item, made unique by one extra level, and their lookup."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from rqf.errors import DataError
from rqf.io import atomic_path


def group_codes(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group id of each row's code tuple, size of each group), by hashing the tuples."""
    codes = np.ascontiguousarray(codes.astype(np.int64))
    if len(codes) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    k = int(codes.max()) + 1
    if k ** codes.shape[1] < 2 ** 62:  # pack the tuple into one integer key
        key = np.zeros(len(codes), np.int64)
        for level in range(codes.shape[1]):
            key = key * k + codes[:, level]
        _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    else:
        _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return inverse.ravel(), counts


def unique_codes(codes: np.ndarray) -> np.ndarray:
    """Append TIGER's extra level: 0, 1, 2 ... among items sharing a code, in row order."""
    group, _ = group_codes(codes)
    order = np.argsort(group, kind="stable")
    sorted_group = group[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_group)) + 1] if len(group) else np.zeros(0, int)
    first = np.repeat(starts, np.diff(np.r_[starts, len(group)]))
    rank = np.empty(len(group), np.int64)
    rank[order] = np.arange(len(group)) - first
    return np.concatenate([codes.astype(np.int64), rank[:, None]], axis=1)


def code_statistics(codes: np.ndarray, codebook_size: int) -> dict[str, Any]:
    """Utilisation, perplexity, collisions and prefix counts of a code matrix (n, levels)."""
    n, levels = codes.shape
    util, reach_util, perplexity, prefixes = [], [], [], []
    for level in range(levels):
        counts = np.bincount(codes[:, level], minlength=codebook_size)
        used = int((counts > 0).sum())
        util.append(used / codebook_size)
        reach_util.append(used / min(codebook_size, n) if n else 0.0)
        p = counts[counts > 0] / max(n, 1)
        perplexity.append(float(np.exp(-(p * np.log(p)).sum())) if n else 0.0)
        prefixes.append(int(len(group_codes(codes[:, :level + 1])[1])) if n else 0)
    group, sizes = group_codes(codes)
    shared = sizes[group] > 1 if n else np.zeros(0, bool)
    return {
        "n": int(n),
        "utilization": util,
        "utilization_of_reachable": reach_util,
        "perplexity": perplexity,
        "distinct_prefixes": prefixes,
        "unique_code_share": float(1 - shared.mean()) if n else 0.0,
        "collision_rate": float(shared.mean()) if n else 0.0,
        "max_items_per_code": int(sizes.max()) if n else 0,
        "distinct_codes": int(len(sizes)),
    }


def write_semantic_ids(path: Path, item_ids: np.ndarray, codes: np.ndarray,
                       codebooks: np.ndarray, attrs: dict[str, Any]) -> Path:
    unique = unique_codes(codes)
    lookup = np.lexsort(unique.T[::-1])
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("item_ids", data=np.asarray(item_ids, np.int64))
            f.create_dataset("codes", data=codes.astype(np.int32))
            f.create_dataset("unique_codes", data=unique.astype(np.int32))
            f.create_dataset("lookup_order", data=lookup.astype(np.int64))
            f.create_dataset("codebooks", data=codebooks.astype(np.float32))
            for k, v in attrs.items():
                f.attrs[k] = v
    return path


class SemanticIds:
    """A written semantic_ids.h5 with lookups both ways."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        try:
            with h5py.File(path, "r") as f:
                self.item_ids = f["item_ids"][()]
                self.codes = f["codes"][()]
                self.unique_codes = f["unique_codes"][()]
                self.lookup_order = f["lookup_order"][()]
        except (OSError, KeyError) as exc:
            raise DataError(f"{path}: not a semantic_ids.h5 file ({exc})") from None
        self._row = {int(i): r for r, i in enumerate(self.item_ids)}

    def of_item(self, item_id: int) -> np.ndarray:
        try:
            return self.unique_codes[self._row[int(item_id)]]
        except KeyError:
            raise DataError(f"item id {item_id} is not in the semantic IDs") from None

    def item_of(self, semantic_id: Sequence[int]) -> int:
        """The item whose unique code is ``semantic_id`` (binary search over the sorted codes)."""
        target = tuple(int(c) for c in semantic_id)
        if len(target) != self.unique_codes.shape[1]:
            raise DataError(f"a semantic ID has {self.unique_codes.shape[1]} levels, got {len(target)}")
        lo, hi = 0, len(self.lookup_order)
        while lo < hi:
            mid = (lo + hi) // 2
            if tuple(self.unique_codes[self.lookup_order[mid]]) < target:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(self.lookup_order) and tuple(self.unique_codes[self.lookup_order[lo]]) == target:
            return int(self.item_ids[self.lookup_order[lo]])
        raise DataError(f"no item has semantic ID {list(target)}")
