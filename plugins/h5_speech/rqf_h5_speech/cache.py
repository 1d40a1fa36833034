"""The sharded cache format: index, shard names, key rules, and per-process shard handles.

``processed_dir/features_00001.h5 ...`` each hold at most ``samples_per_file`` samples, one
group per sample key (a key with ``/`` is nested groups); ``hdf5_index.json`` maps every key to
its shard: ``{"sample_index": {key: {"file_idx": i, "group_name": key}}, "current_file_idx",
"current_file_count", "samples_per_file", "use_float16"}``.
"""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import h5py
import numpy as np

from rqf import DataError

INDEX_NAME = "hdf5_index.json"
SHARD_PATTERN = re.compile(r"^features_(\d{5,})\.h5$")
KEYS_DATASET = "_rqf_sample_keys"  # written by rqf: the keys a shard holds, for recovery


def shard_name(file_idx: int) -> str:
    return f"features_{file_idx:05d}.h5"


def check_key(key: str, where: str = "") -> str:
    """Refuse keys that would escape the group tree or the folder: '..', absolute, empty parts."""
    prefix = f"{where}: " if where else ""
    if not isinstance(key, str) or not key:
        raise DataError(f"{prefix}sample key {key!r}: expected a non-empty string")
    path = PurePosixPath(key)
    if key.startswith("/") or path.is_absolute() or re.match(r"^[A-Za-z]:[\\/]", key):
        raise DataError(f"{prefix}sample key {key!r}: absolute paths are not allowed")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts) or "\\" in key:
        raise DataError(f"{prefix}sample key {key!r}: '..', '.', empty parts and backslashes "
                        "are not allowed")
    return key


class _DuplicateKey(Exception):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


@dataclass
class CacheIndex:
    """The parsed ``hdf5_index.json``."""

    directory: Path
    entries: dict[str, tuple[int, str]]
    samples_per_file: int
    use_float16: bool
    current_file_idx: int = 0
    current_file_count: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.directory / INDEX_NAME

    @classmethod
    def empty(cls, directory: Path, samples_per_file: int, use_float16: bool) -> "CacheIndex":
        return cls(Path(directory), {}, samples_per_file, use_float16)

    @classmethod
    def load(cls, directory: Path) -> "CacheIndex":
        directory = Path(directory)
        path = directory / INDEX_NAME
        if not directory.is_dir():
            raise DataError(f"{directory}: cache directory not found")
        if not path.exists():
            raise DataError(f"{path}: index not found (a sharded cache needs {INDEX_NAME})")
        try:
            data = json.loads(path.read_text(), object_pairs_hook=_no_duplicate_keys)
        except _DuplicateKey as exc:
            raise DataError(f"{path}: key {exc.args[0]!r} appears twice in one mapping; the "
                            "index must name each sample once") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: "
                            f"{exc.msg}") from None
        except (OSError, UnicodeDecodeError, RecursionError) as exc:
            raise DataError(f"{path}: cannot read the index ({type(exc).__name__}: "
                            f"{str(exc)[:200]})") from None
        if not isinstance(data, dict) or not isinstance(data.get("sample_index"), dict):
            raise DataError(f"{path}: sample_index: expected a mapping of sample keys")
        for name, kind, minimum in (("samples_per_file", int, 1), ("current_file_idx", int, 0),
                                    ("current_file_count", int, 0), ("use_float16", bool, None)):
            if name not in data:
                continue
            value = data[name]  # exact JSON types: "no" is not false, true is not 1
            if type(value) is not kind or (minimum is not None and value < minimum):
                expected = "true or false" if kind is bool else f"an integer >= {minimum}"
                raise DataError(f"{path}: {name}: expected {expected}, got {value!r}")
        entries: dict[str, tuple[int, str]] = {}
        for key, entry in data["sample_index"].items():
            check_key(key, str(path))
            if isinstance(entry, (list, tuple)) and len(entry) == 2:  # (file_idx, group) pairs
                entry = {"file_idx": entry[0], "group_name": entry[1]}
            if not isinstance(entry, dict) or type(entry.get("file_idx")) is not int \
                    or entry["file_idx"] < 0 or not isinstance(entry.get("group_name"), str):
                raise DataError(f"{path}: sample_index[{key!r}]: expected "
                                f"{{'file_idx': int >= 0, 'group_name': str}}, got {entry!r}")
            check_key(entry["group_name"], str(path))
            entries[key] = (entry["file_idx"], entry["group_name"])
        extra = {k: v for k, v in data.items() if k not in
                 ("sample_index", "samples_per_file", "use_float16", "current_file_idx",
                  "current_file_count")}
        return cls(directory, entries, int(data.get("samples_per_file", 20000)),
                   bool(data.get("use_float16", True)), int(data.get("current_file_idx", 0)),
                   int(data.get("current_file_count", 0)), extra)

    def to_json(self) -> dict[str, Any]:
        return {
            "sample_index": {k: {"file_idx": i, "group_name": g}
                             for k, (i, g) in self.entries.items()},
            "current_file_idx": self.current_file_idx,
            "current_file_count": self.current_file_count,
            "samples_per_file": self.samples_per_file,
            "use_float16": self.use_float16,
            **self.extra,
        }

    def shard_counts(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for file_idx, _ in self.entries.values():
            counts[file_idx] = counts.get(file_idx, 0) + 1
        return counts

    def shard_files(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if SHARD_PATTERN.match(p.name))


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


def shard_problems(index: CacheIndex) -> list[str]:
    """What is wrong with the shard files of a cache, compared with its index.

    A listed shard must exist inside the cache folder (a symlink may point only within it) and
    hold at most ``samples_per_file`` samples; every shard file must be listed.
    """
    problems = []
    directory = index.directory.resolve()
    counts = index.shard_counts()
    for file_idx, count in sorted(counts.items()):
        path = index.directory / shard_name(file_idx)
        if not path.exists():
            problems.append(f"{path}: shard listed in the index for {count} samples is missing")
        elif path.is_symlink() and directory not in path.resolve().parents:
            problems.append(f"{path}: a symlink to {path.resolve()}, outside the cache folder; "
                            "a cache reads only its own files")
        if count > index.samples_per_file:
            problems.append(f"{index.path}: samples_per_file is {index.samples_per_file} but the "
                            f"index puts {count} samples in {path.name}")
    for path in index.shard_files():
        file_idx = int(SHARD_PATTERN.match(path.name).group(1))
        if file_idx not in counts:
            problems.append(f"{path}: shard file not listed in {INDEX_NAME} (a writer stopped "
                            "between its commit and the index update leaves one: reopening the "
                            "writer adopts it; otherwise move it out of the cache)")
    return problems
