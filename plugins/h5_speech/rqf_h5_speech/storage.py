"""The ``h5_sharded`` storage: a sharded feature cache read through its index."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rqf import DataError, InspectReport, Param, Storage
from rqf_h5_speech.cache import CACHE_FILES, INDEX_NAME, SHARD_PATTERN, CacheIndex, shard_problems
from rqf_h5_speech.shards import SampleArrays, ShardHandles


class H5ShardedStorage(Storage):
    """A sharded HDF5 feature cache (features_NNNNN.h5 + hdf5_index.json), read by key."""

    name = "h5_sharded"
    writer_files = CACHE_FILES  # a token cache is a cache like the features'
    params = (
        Param("processed_dir", "path", help="folder holding hdf5_index.json and the shards"),
        Param("max_open_files", int, 64, "shard files kept open per process", min=1),
    )

    def __init__(self, processed_dir: str, max_open_files: int = 64) -> None:
        super().__init__(processed_dir=processed_dir, max_open_files=max_open_files)
        self.directory = Path(processed_dir)
        self.max_open_files = max_open_files
        self.index: CacheIndex | None = None
        self.keys: Sequence[str] = []  # a KeyTable once open: arrays, not a str per key
        self._handles: ShardHandles | None = None

    def open(self) -> "H5ShardedStorage":
        index = CacheIndex.load(self.directory)
        for problem in shard_problems(index):
            raise DataError(problem)
        self.index = index
        self.keys = index.table
        self._handles = ShardHandles(self.directory, self.max_open_files)
        return self

    def close(self) -> None:
        if self._handles is not None:
            self._handles.close()

    def read(self, key: str) -> dict[str, np.ndarray]:
        """Every array of one sample."""
        arrays = self.arrays(key)
        return {name: arrays.read(name) for name in arrays.datasets}

    def arrays(self, key: str) -> SampleArrays:
        """One sample's arrays, opened for their shapes and for reads into given buffers."""
        if self.index is None or self._handles is None:
            raise DataError(f"{self.directory}: storage used before open()")
        row = self.index.table.position(key)
        if row < 0:
            raise DataError(f"{self.index.path}: no sample {key!r} in the index")
        return self.arrays_at(row, key)

    def arrays_at(self, row: int, key: str | None = None) -> SampleArrays:
        """The arrays of the sample in row ``row`` of ``keys`` (no lookup by key)."""
        if self.index is None or self._handles is None:
            raise DataError(f"{self.directory}: storage used before open()")
        table = self.index.table
        return SampleArrays(self._handles.get(int(table.file_idx[row])), table.group(row),
                            table[row] if key is None else key)

    def describe(self) -> dict[str, Any]:
        assert self.index is not None
        return {"processed_dir": str(self.directory), "n_samples": len(self.keys),
                "n_shards": len(self.index.shard_counts()), "use_float16": self.index.use_float16}

    @classmethod
    def recognizes(cls, path: Path) -> bool:
        path = Path(path)
        if path.is_file() and path.name == INDEX_NAME:
            return True
        return path.is_dir() and ((path / INDEX_NAME).exists()
                                  or any(SHARD_PATTERN.match(p.name) for p in path.iterdir()))

    @classmethod
    def inspect(cls, path: Path, full: bool = False) -> InspectReport:
        from rqf_h5_speech.inspection import inspect_cache

        path = Path(path)
        return inspect_cache(path.parent if path.is_file() else path, full=full)
