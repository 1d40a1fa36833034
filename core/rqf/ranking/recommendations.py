"""``recommendations.h5``: each ranked user's id and top items, best first."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from rqf.errors import DataError
from rqf.io import atomic_h5

FORMAT = "rqf-recommendations-1"


def write_recommendations(path: Path, user_ids: np.ndarray, items: np.ndarray,
                          attrs: Mapping[str, Any]) -> Path:
    """``user_ids`` (vlen str, as in sequence.h5) and ``items`` (n, K) int64, best first."""
    with atomic_h5(path) as f:
        f.create_dataset("user_ids", data=np.array([str(u) for u in user_ids], dtype=object),
                         dtype=h5py.string_dtype())
        f.create_dataset("items", data=np.asarray(items, np.int64))
        f.attrs["format"] = FORMAT
        for k, v in attrs.items():
            f.attrs[k] = v
    return Path(path)


def read_recommendations(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    try:
        with h5py.File(path, "r") as f:
            users = np.array([u.decode() if isinstance(u, bytes) else str(u)
                              for u in f["user_ids"][()]], dtype=object)
            items = f["items"][()]
            attrs = dict(f.attrs)
    except (OSError, KeyError) as exc:
        raise DataError(f"{path}: not a readable recommendations.h5 ({exc})") from None
    if items.ndim != 2 or len(items) != len(users):
        raise DataError(f"{path}: items must be (n_users, K) with one row per user id")
    return users, items, attrs

