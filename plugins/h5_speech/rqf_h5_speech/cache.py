"""The sharded cache format: index, shard names, key rules, and per-process shard handles.

``processed_dir/features_00001.h5 ...`` each hold at most ``samples_per_file`` samples, one
group per sample key (a key with ``/`` is nested groups); ``hdf5_index.json`` maps every key to
its shard: ``{"sample_index": {key: {"file_idx": i, "group_name": key}}, "current_file_idx",
"current_file_count", "samples_per_file", "use_float16"}``.

rqf keeps the same index as arrays in ``hdf5_index.keys.h5`` (see ``keytable``), written with
the JSON and stamped with the JSON's size and modification time: while the stamp matches, rqf
reads the arrays; when another tool has rewritten the JSON since, the JSON. A writer's commit
only renames its finished shard into place; the shard itself lists its keys
(``_rqf_sample_keys``), so the shards committed after the index files were last written are the
index's journal, read on top of them. Closing a writer folds the journal into both files.
"""

from __future__ import annotations

import gc
import json
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import h5py
import numpy as np

from rqf import DataError, atomic_path
from rqf_h5_speech.keytable import KeyTable, encode_keys, first_bad_key

INDEX_NAME = "hdf5_index.json"
KEYS_INDEX_NAME = "hdf5_index.keys.h5"  # rqf's copy of the index, as arrays
SHARD_PATTERN = re.compile(r"^features_(\d{5,})\.h5$")
KEYS_DATASET = "_rqf_sample_keys"  # written by rqf: the keys a shard holds, for recovery
KEYS_INDEX_FORMAT = "rqf-keys-index-1"
JSON_CHUNK = 100_000  # keys written to the JSON index per step


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
    if any(p in ("", ".", "..") for p in parts) or "\\" in key or "\x00" in key:
        raise DataError(f"{prefix}sample key {key!r}: '..', '.', empty parts, backslashes "
                        "and NUL are not allowed")
    return key


class _DuplicateKey(Exception):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):  # rare: find which key came twice
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return out


def read_shard_keys(path: Path) -> list[str] | None:
    """The keys an rqf shard recorded when it was committed (None: not an rqf shard)."""
    try:
        with h5py.File(path, "r") as f:
            if KEYS_DATASET not in f:
                return None
            return [k.decode() if isinstance(k, bytes) else str(k)
                    for k in f[KEYS_DATASET][()]]
    except (OSError, KeyError):
        return None


@dataclass
class CacheIndex:
    """The cache's index: every key with its shard (a ``KeyTable``) and the settings."""

    directory: Path
    table: KeyTable
    samples_per_file: int
    use_float16: bool
    current_file_idx: int = 0
    current_file_count: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    journal: list[int] = field(default_factory=list)  # shards read on top of the index files
    source: str = "json"  # which file the keys came from: json or keys

    @property
    def path(self) -> Path:
        return self.directory / INDEX_NAME

    @property
    def keys_path(self) -> Path:
        return self.directory / KEYS_INDEX_NAME

    @classmethod
    def empty(cls, directory: Path, samples_per_file: int, use_float16: bool) -> "CacheIndex":
        return cls(Path(directory), KeyTable.empty(), samples_per_file, use_float16)

    @classmethod
    def load(cls, directory: Path) -> "CacheIndex":
        """The index files, then the shards committed after them (the journal)."""
        directory = Path(directory)
        path = directory / INDEX_NAME
        if not directory.is_dir():
            raise DataError(f"{directory}: cache directory not found")
        if not path.exists():
            raise DataError(f"{path}: index not found (a sharded cache needs {INDEX_NAME})")
        index = cls._load_keys_index(directory) or cls._load_json(directory)
        index.read_journal()
        return index

    @classmethod
    def _load_keys_index(cls, directory: Path) -> "CacheIndex | None":
        keys_path = directory / KEYS_INDEX_NAME
        try:
            st = os.stat(directory / INDEX_NAME)
            if not keys_path.exists():
                return None
            table, attrs = KeyTable.load(keys_path)
        except (OSError, KeyError):
            return None  # unreadable: the JSON is the index
        if attrs.get("format") != KEYS_INDEX_FORMAT or attrs.get("json_size") != st.st_size \
                or attrs.get("json_mtime_ns") != st.st_mtime_ns:
            return None  # the JSON changed after rqf wrote both: it is the index
        return cls(directory, table, int(attrs["samples_per_file"]), bool(attrs["use_float16"]),
                   int(attrs["current_file_idx"]), int(attrs["current_file_count"]),
                   json.loads(attrs.get("extra", "{}")), source="keys")

    @classmethod
    def _load_json(cls, directory: Path) -> "CacheIndex":
        path = directory / INDEX_NAME
        collecting = gc.isenabled()
        gc.disable()  # millions of new dicts: the cycle collector would walk them over and over
        try:
            text = path.read_text(encoding="utf-8")
            data = json.loads(text)
            entries = data.get("sample_index") if isinstance(data, dict) else None
            if isinstance(entries, dict) and text.count('"file_idx"') != len(entries):
                # a key twice collapses silently in a dict: parse again, watching every mapping
                json.loads(text, object_pairs_hook=_no_duplicate_keys)
            del text
        except _DuplicateKey as exc:
            raise DataError(f"{path}: key {exc.args[0]!r} appears twice in one mapping; the "
                            "index must name each sample once") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: "
                            f"{exc.msg}") from None
        except (OSError, UnicodeDecodeError, RecursionError) as exc:
            raise DataError(f"{path}: cannot read the index ({type(exc).__name__}: "
                            f"{str(exc)[:200]})") from None
        finally:
            if collecting:
                gc.enable()
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
        table = _table_from_json(data.pop("sample_index"), path)  # frees it as it goes
        extra = {k: v for k, v in data.items() if k not in
                 ("sample_index", "samples_per_file", "use_float16", "current_file_idx",
                  "current_file_count")}
        return cls(directory, table, int(data.get("samples_per_file", 20000)),
                   bool(data.get("use_float16", True)), int(data.get("current_file_idx", 0)),
                   int(data.get("current_file_count", 0)), extra)

    def read_journal(self) -> None:
        """Apply the rqf shards committed after the index files, oldest first."""
        newest = max(self.table.shard_counts(), default=0)
        keys: list[str] = []
        fidx: list[int] = []
        for file_idx, shard in self.shards_on_disk().items():
            if file_idx <= newest:
                continue
            found = read_shard_keys(shard)
            if found is None:
                continue  # not rqf's: shard_problems names it
            keys += found
            fidx += [file_idx] * len(found)
            self.journal.append(file_idx)
            self.current_file_idx, self.current_file_count = file_idx, len(found)
        if keys:
            self.table = self.table.updated(keys, fidx)

    def shard_counts(self) -> dict[int, int]:
        return self.table.shard_counts()

    def shards_on_disk(self) -> dict[int, Path]:
        """The shard files in the folder by number, lowest first."""
        found = {}
        for p in self.directory.iterdir():
            match = SHARD_PATTERN.match(p.name)
            if match:
                found[int(match.group(1))] = p
        return dict(sorted(found.items()))

    def save(self) -> None:
        """Write the seed's JSON index, then rqf's arrays stamped with it (both atomically).

        A crash between the two leaves a complete JSON that no longer matches the stamp, so
        the JSON is read; the shards of the journal are in both.
        """
        with atomic_path(self.path) as tmp:
            with open(tmp, "w") as fh:
                self._write_json(fh)
                fh.flush()
                os.fsync(fh.fileno())
        st = os.stat(self.path)
        with atomic_path(self.keys_path) as tmp:
            self.table.save(tmp, {
                "format": KEYS_INDEX_FORMAT, "json_size": st.st_size,
                "json_mtime_ns": st.st_mtime_ns, "samples_per_file": self.samples_per_file,
                "use_float16": self.use_float16, "current_file_idx": self.current_file_idx,
                "current_file_count": self.current_file_count,
                "extra": json.dumps(self.extra)})
        self.journal = []
        _fsync_dir(self.directory)

    def _write_json(self, fh: Any) -> None:
        fh.write('{"sample_index": {')
        table, n = self.table, len(self.table)
        for start in range(0, n, JSON_CHUNK):
            stop = min(start + JSON_CHUNK, n)
            keys = table[start:stop]
            groups = keys if table.groups is None else [table.group(i) for i in range(start, stop)]
            chunk = json.dumps({k: {"file_idx": i, "group_name": g} for k, i, g in
                                zip(keys, table.file_idx[start:stop].tolist(), groups)})
            fh.write((", " if start else "") + chunk[1:-1])
        tail = json.dumps({"current_file_idx": self.current_file_idx,
                           "current_file_count": self.current_file_count,
                           "samples_per_file": self.samples_per_file,
                           "use_float16": self.use_float16, **self.extra})
        fh.write("}, " + tail[1:])


def _table_from_json(sample_index: dict[str, Any], path: Path) -> KeyTable:
    """The keys of a parsed ``sample_index``, checked: the common shape in a few whole-list
    steps, anything unusual (list pairs, a wrong entry) one entry at a time."""
    keys = list(sample_index)
    entries = list(sample_index.values())
    sample_index.clear()  # the caller's mapping: its entries now live only in ``entries``
    try:
        fidx = [e["file_idx"] for e in entries]
        groups = [e["group_name"] for e in entries]
        plain = set(map(type, fidx)) <= {int} and set(map(type, groups)) <= {str} \
            and (not fidx or min(fidx) >= 0)
    except (TypeError, KeyError, IndexError):
        plain = False
    if not plain:
        fidx, groups = [], []
        for key, entry in zip(keys, entries):
            if isinstance(entry, (list, tuple)) and len(entry) == 2:  # (file_idx, group) pairs
                entry = {"file_idx": entry[0], "group_name": entry[1]}
            if not isinstance(entry, dict) or type(entry.get("file_idx")) is not int \
                    or entry["file_idx"] < 0 or not isinstance(entry.get("group_name"), str):
                raise DataError(f"{path}: sample_index[{key!r}]: expected "
                                f"{{'file_idx': int >= 0, 'group_name': str}}, got {entry!r}")
            fidx.append(entry["file_idx"])
            groups.append(entry["group_name"])
    del entries
    blob, offsets = encode_keys(keys)
    bad = first_bad_key(blob, offsets)
    if bad is not None:
        check_key(keys[bad], str(path))
    same = groups == keys
    group_arrays = None
    if not same:
        group_arrays = encode_keys(groups)
        bad = first_bad_key(*group_arrays)
        if bad is not None:
            check_key(groups[bad], str(path))
    return KeyTable(blob, offsets, np.array(fidx, np.int32), group_arrays)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
    for file_idx, path in index.shards_on_disk().items():
        if file_idx not in counts:
            problems.append(f"{path}: shard file not listed in {INDEX_NAME} (a writer stopped "
                            "between its commit and the index update leaves one: reopening the "
                            "writer adopts it; otherwise move it out of the cache)")
    return problems
