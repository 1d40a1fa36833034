"""Reading shards from any process: a bounded set of open files per process, and the arrays
of one sample read through h5py's low-level calls."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from rqf import DataError
from rqf_h5_speech.cache import shard_name


class ShardHandles:
    """Open shard files of this process, at most ``max_open`` at once (least recent closed).

    Handles are keyed by process id: a DataLoader worker forked after the parent opened a
    shard opens its own instead of using the inherited one.
    """

    def __init__(self, directory: Path, max_open: int = 64) -> None:
        self.directory = Path(directory)
        self.max_open = max_open
        self._pid = os.getpid()
        self._open: OrderedDict[int, h5py.File] = OrderedDict()

    def get(self, file_idx: int) -> h5py.File:
        if self._pid != os.getpid():
            self._open = OrderedDict()  # inherited handles belong to the parent: drop, not close
            self._pid = os.getpid()
        f = self._open.get(file_idx)
        if f is not None:
            self._open.move_to_end(file_idx)
            return f
        path = self.directory / shard_name(file_idx)
        if not path.exists():
            raise DataError(f"{path}: shard listed in the index is missing")
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise DataError(f"{path}: shard cannot be opened, it may be truncated or corrupted "
                            f"({str(exc).splitlines()[0]})") from None
        self._open[file_idx] = f
        while len(self._open) > self.max_open:
            _, old = self._open.popitem(last=False)
            old.close()
        return f

    def close(self) -> None:
        if self._pid == os.getpid():
            for f in self._open.values():
                f.close()
        self._open = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        return {"directory": self.directory, "max_open": self.max_open, "_pid": None,
                "_open": OrderedDict()}


class SampleArrays:
    """The arrays of one sample, opened but not yet read.

    Shapes and dtypes come from the file's metadata, so a batch can be laid out before any
    data is read, and each array is then read straight into its place in the batch.
    The low-level calls skip h5py's per-object bookkeeping, which costs more than the read
    itself on uncompressed shards.
    """

    def __init__(self, f: h5py.File, group_name: str, key: str) -> None:
        self.filename, self.key = f.filename, key
        try:
            gid = h5py.h5g.open(f.id, group_name.encode())
        except (KeyError, TypeError, ValueError, OSError):
            if group_name not in f:  # only on the error path: which error to report
                raise DataError(f"{f.filename}: sample {key!r}: group {group_name!r} is missing "
                                "from the shard") from None
            raise DataError(f"{f.filename}: sample {key!r}: {group_name!r} is not a "
                            "group") from None
        self._file, self._group = f, group_name
        self.datasets: dict[str, h5py.h5d.DatasetID] = {}
        try:
            for raw_name in gid:
                did = h5py.h5o.open(gid, raw_name)
                if isinstance(did, h5py.h5d.DatasetID):  # a child group: a longer key's sample
                    self.datasets[raw_name.decode()] = did
        except OSError as exc:
            raise self._error(exc) from None
        if not self.datasets:
            raise DataError(f"{f.filename}: sample {key!r}: group {group_name!r} holds no arrays")

    def _error(self, exc: OSError) -> DataError:
        return DataError(f"{self.filename}: sample {self.key!r} cannot be read "
                         f"({str(exc).splitlines()[0]})")

    def __contains__(self, name: str) -> bool:
        return name in self.datasets

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.datasets[name].shape or ())

    def dtype(self, name: str) -> np.dtype:
        return self.datasets[name].dtype

    def read(self, name: str) -> np.ndarray:
        did = self.datasets[name]
        if did.dtype.kind not in "biuf" or did.shape is None:
            return self._file[self._group][name][()]  # strings, scalars: the high-level API
        out = np.empty(did.shape, dtype=did.dtype)
        if out.size:
            try:
                did.read(h5py.h5s.ALL, h5py.h5s.ALL, out)
            except OSError as exc:
                raise self._error(exc) from None
        return out

    def read_into(self, name: str, out: np.ndarray) -> None:
        """Read the first ``out.shape[0]`` frames of a (..., T, dim) array into ``out``.

        ``out`` is a C-contiguous (frames, dim) array of any numeric dtype (HDF5 converts);
        leading axes of length 1, as in the mel's (1, T, 80), are read through.
        """
        did, shape = self.datasets[name], self.shape(name)
        frames = out.shape[0]
        if len(shape) < 2 or any(n != 1 for n in shape[:-2]) or shape[-1] != out.shape[1] \
                or frames > shape[-2]:
            raise DataError(f"{self.filename}: sample {self.key!r}: {name} has shape {shape}, "
                            f"cannot read {frames} frames of width {out.shape[1]} from it")
        if not frames:
            return
        count = shape[:-2] + (frames, shape[-1])
        fspace = did.get_space()
        fspace.select_hyperslab((0,) * len(shape), count)
        try:
            did.read(h5py.h5s.create_simple(count), fspace, out)
        except OSError as exc:
            raise self._error(exc) from None
