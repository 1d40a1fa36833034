"""A crash-safe, parallel writer of sharded feature caches.

Parallelism: HDF5 serialises its calls behind one lock, so the expensive part of a write,
compression, happens outside it. Worker threads convert to float16 and compress each array
into the exact chunk the HDF5 filter would have written (zlib, and ``zstandard`` / ``lz4``
when installed, all release the GIL), and a single thread hands the finished chunk to HDF5
with ``write_direct_chunk``. The files are ordinary gzip(+shuffle), zstd or lz4 datasets, one
chunk per array, readable by any HDF5 reader with the filter. ``lzf``, ``blosc`` and
``bitshuffle`` (and zstd/lz4 without their Python packages) compress inside HDF5, so they do
not scale with workers.

Crash safety: the shard being filled is ``features_NNNNN.h5.partial``. A commit writes the
shard's keys into it, closes it, fsyncs it and renames it to ``features_NNNNN.h5``; that rename
is the whole commit, so its cost does not grow with the cache. rqf's readers read such shards on
top of the index files (the journal); closing the writer writes ``hdf5_index.json`` (the seed's
format) and ``hdf5_index.keys.h5`` (rqf's arrays) once, with every sample in them. A committed
shard is never opened for writing again, so a kill at any moment leaves every committed sample
readable by rqf; at most the samples since the last commit are lost. Reopening the writer (or
``rqf speech finalize``) removes partial shards, folds the journal into the index files, and
continues in a new shard.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from rqf import DataError, FolderLock, RqfError, disk_full, is_disk_full
from rqf_h5_speech.cache import (INDEX_NAME, KEYS_DATASET, KEYS_INDEX_NAME, LOCK_NAME,
                                 PARTIAL_SUFFIX, SHARD_PATTERN, CacheIndex, _fsync_dir, check_key,
                                 held_where_indexed, read_shard_keys, shard_name)
from rqf_h5_speech.codecs import CODECS, IN_LIBRARY_CODECS, chunk_compressor, plugin_filter

FORMAT_VERSION = "rqf-sharded-cache-1"


@dataclass
class _Array:
    name: str
    data: np.ndarray | None  # raw array when HDF5 itself writes it
    shape: tuple[int, ...]
    dtype: np.dtype
    chunk: bytes | None = None  # a finished gzip(+shuffle) chunk for write_direct_chunk


def remove_own_files(directory: Path) -> None:
    """Empty a cache folder for a new start: only when every file in it is one a writer makes
    (the writer's lock file stays; its caller holds it)."""
    own = [p for p in directory.iterdir() if p.name in (INDEX_NAME, KEYS_INDEX_NAME)
           or p.name.startswith((LOCK_NAME, f".{INDEX_NAME}.", f".{KEYS_INDEX_NAME}."))
           or SHARD_PATTERN.match(p.name)
           or SHARD_PATTERN.match(p.name.removesuffix(PARTIAL_SUFFIX))]
    foreign = sorted(p.name for p in directory.iterdir() if p not in own)
    if foreign:
        raise DataError(f"{directory}: holds {', '.join(foreign[:3])}, which a cache "
                        "writer does not make; not starting it over")
    for p in own:
        if not p.name.startswith(LOCK_NAME) and p.is_file():
            p.unlink()


class ShardedCacheWriter:
    """Writes samples (dicts of arrays) into a sharded cache; resumes an existing one.

    ``commit_every`` (samples) and ``commit_seconds`` bound what a crash can lose; a commit
    finishes the current shard, so shards then hold at most ``commit_every`` samples.
    ``on_duplicate`` is ``error``, ``skip`` or ``replace``. ``start_over`` empties the folder
    first, and only when every file in it is one a writer makes. One writer per cache: a
    second one, in any process, is refused at open with the holder named.
    ``samples_per_file`` or ``use_float16`` None keeps an existing cache's own (a new cache
    gets 20000 and true).
    """

    def __init__(self, directory: str | Path, samples_per_file: int | None = 20000,
                 use_float16: bool | None = True, compression: str = "gzip",
                 compression_level: int = 4,
                 shuffle: bool = False, num_workers: int = 4, commit_every: int | None = None,
                 commit_seconds: float | None = 600.0, on_duplicate: str = "error",
                 attrs: Mapping[str, Any] | None = None, start_over: bool = False) -> None:
        if compression not in CODECS:
            raise RqfError(f"compression: expected one of {', '.join(CODECS)}, got {compression!r}")
        if on_duplicate not in ("error", "skip", "replace"):
            raise RqfError(f"on_duplicate: expected error, skip or replace, got {on_duplicate!r}")
        if samples_per_file is not None and samples_per_file < 1:
            raise RqfError(f"samples_per_file: expected a positive number, got {samples_per_file}")
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full(self.directory) from None
            raise
        # one writer per cache, from before recovery until close(); readers never take it
        self._folder_lock = FolderLock(self.directory, "cache writer", LOCK_NAME).acquire()
        try:
            if start_over:
                remove_own_files(self.directory)
            self._setup(samples_per_file, use_float16, compression, compression_level, shuffle,
                        num_workers, commit_every, commit_seconds, on_duplicate, attrs)
        except BaseException:
            self._folder_lock.release()
            raise

    def _setup(self, samples_per_file, use_float16, compression, compression_level, shuffle,
               num_workers, commit_every, commit_seconds, on_duplicate, attrs) -> None:
        self.compression, self.level, self.shuffle = compression, compression_level, shuffle
        self.commit_seconds = commit_seconds
        self.on_duplicate = on_duplicate
        self.attrs = dict(attrs or {})
        self._filter = plugin_filter(compression, compression_level) \
            if compression in IN_LIBRARY_CODECS else \
            {"compression": "gzip", "compression_opts": compression_level} \
            if compression == "gzip" else {}
        self._compress = chunk_compressor(compression, compression_level)
        self.index = self._recover(samples_per_file, use_float16)
        self.use_float16 = self.index.use_float16
        self.samples_per_file = self.index.samples_per_file
        self.commit_every = commit_every or samples_per_file or self.samples_per_file
        self._next_idx = max([self.index.current_file_idx, *self.index.shard_counts(),
                              *self.index.shards_on_disk()], default=0) + 1
        self._counts = self.index.shard_counts()  # samples per shard, kept up to date
        self._committed: dict[str, int] = {}  # keys committed by this writer: their shard
        self._pending_keys: set[str] = set()
        self._file: h5py.File | None = None
        self._file_idx = 0
        self._file_keys: list[str] = []
        self._opened_at = 0.0
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(num_workers) if num_workers > 0 else None
        self._queue: queue.Queue[Future | None] = queue.Queue(maxsize=max(4, 4 * num_workers))
        self._thread = threading.Thread(target=self._drain, name="rqf-cache-writer", daemon=True) \
            if num_workers > 0 else None
        if self._thread:
            self._thread.start()
        self.written = 0
        self.skipped = 0

    # -- recovery -------------------------------------------------------------------------
    def _recover(self, samples_per_file: int | None, use_float16: bool | None) -> CacheIndex:
        # every check first (reading only), then what recovery changes
        if (self.directory / INDEX_NAME).exists():
            index = CacheIndex.load(self.directory)  # with the journal: shards committed since
            if use_float16 is not None and index.use_float16 != use_float16:
                raise DataError(f"{index.path}: use_float16 is {index.use_float16} in the "
                                f"existing cache, the writer was asked for {use_float16}")
            if samples_per_file is not None and index.samples_per_file != samples_per_file:
                warnings.warn(f"{index.path}: keeping the cache's samples_per_file "
                              f"{index.samples_per_file} (asked for {samples_per_file})",
                              stacklevel=3)
        else:
            index = CacheIndex.from_shards(self.directory, samples_per_file or 20000,
                                          True if use_float16 is None else use_float16)
        referenced = index.shard_counts()
        unlisted = {}
        for file_idx, path in index.shards_on_disk().items():
            if file_idx in referenced:
                continue
            keys = read_shard_keys(path)  # an unreadable shard stops recovery here
            if keys is None:
                warnings.warn(f"{path}: shard is not in the index and was not written by this "
                              "writer; left as it is", stacklevel=3)
                continue
            unlisted[path] = (file_idx, keys)
        for partial in self.directory.glob(f"features_*.h5{PARTIAL_SUFFIX}"):
            partial.unlink()  # uncommitted by definition
        for tmp in self.directory.glob(f".{INDEX_NAME}.*.tmp"):
            tmp.unlink()  # an index write cut off: the previous index stands
        for tmp in self.directory.glob(f".{KEYS_INDEX_NAME}.*.tmp"):
            tmp.unlink()
        stale = adopted = False
        listed: dict[int, set[str] | None] = {}
        for path, (file_idx, keys) in unlisted.items():
            held = held_where_indexed(index, keys, listed)
            lost = [k for k, ok in zip(keys, held) if not ok]
            if lost:  # the index lost them (a hand edit, another tool): the shard says where
                index.table = index.table.updated(lost, [file_idx] * len(lost))
                adopted = True
                warnings.warn(f"{path}: {len(lost)} samples the index did not list are listed "
                              "again, from the keys the shard holds", stacklevel=3)
                continue
            path.unlink()  # rqf's, and every sample of it was written again later: stale
            stale = True
        self.recovered = bool(index.journal or stale or adopted or not index.path.exists()
                              or index.source != "keys")
        if self.recovered:
            index.save()  # fold the journal in; a first empty index so readers find the cache
        return index

    # -- writing --------------------------------------------------------------------------
    @property
    def keys(self) -> set[str]:
        return set(self.index.table) | set(self._committed) | self._pending_keys

    def __contains__(self, key: str) -> bool:
        return key in self._pending_keys or key in self._committed or key in self.index.table

    def write(self, key: str, arrays: Mapping[str, np.ndarray]) -> bool:
        """Queue one sample; returns False when it was skipped as a duplicate."""
        self._raise_pending_error()
        check_key(key, str(self.directory))
        if not arrays:
            raise DataError(f"sample {key!r}: no arrays to write")
        if key in self:
            if self.on_duplicate == "error":
                raise DataError(f"{self.directory}: sample {key!r} is already in the cache "
                                "(on_duplicate='skip' or 'replace' to allow this)")
            if self.on_duplicate == "skip":
                self.skipped += 1
                return False
        self._pending_keys.add(key)
        arrays = {name: np.asarray(a) for name, a in arrays.items()}
        if self._pool is None:
            self._write_sample(key, self._prepare(arrays))
        else:
            self._queue.put(self._pool.submit(lambda: (key, self._prepare(arrays))))
        return True

    def _prepare(self, arrays: Mapping[str, np.ndarray]) -> list[_Array]:
        out = []
        for name, a in arrays.items():
            if self.use_float16 and a.dtype.kind == "f":
                a = a.astype(np.float16)
            a = np.ascontiguousarray(a)
            chunk = None
            if self._compress is not None and a.size:
                # the array's own buffer goes to the codec (no copy); shuffle needs byte planes
                raw = a.view(np.uint8).reshape(-1, a.itemsize).T.tobytes() \
                    if self._shuffles(a.dtype) else a.reshape(-1).view(np.uint8)
                chunk = self._compress(raw)
            out.append(_Array(name, a if chunk is None else None, a.shape, a.dtype, chunk))
        return out

    def _shuffles(self, dtype: np.dtype) -> bool:
        return self.shuffle and self.compression == "gzip" and dtype.itemsize > 1

    def _drain(self) -> None:
        while True:
            fut = self._queue.get()
            if fut is None:
                return
            if isinstance(fut, threading.Event):  # everything queued before it is written
                fut.set()
                continue
            try:
                key, prepared = fut.result()
                if self._error is None:
                    self._write_sample(key, prepared)
            except BaseException as exc:  # reported at the next write() or close()
                self._error = self._error or exc

    def _write_sample(self, key: str, prepared: list[_Array]) -> None:
        with self._lock:
            try:
                self._write_sample_locked(key, prepared)
            except Exception as exc:
                if not is_disk_full(exc, self.directory):
                    raise
                where = self._abandon_shard()
                raise disk_full(where) from None

    def _abandon_shard(self) -> Path:
        """Drop the shard being filled after a failed write (it was never committed)."""
        path = self.directory / (shard_name(self._file_idx) + PARTIAL_SUFFIX)
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # the file is broken already; what matters is that it is gone
                pass
            self._file = None
        path.unlink(missing_ok=True)
        for key in self._file_keys:
            self._pending_keys.discard(key)
        self._file_keys = []
        return path

    def _write_sample_locked(self, key: str, prepared: list[_Array]) -> None:
        if self._file is None:
            self._open_shard()
        assert self._file is not None
        if key in self._file:
            del self._file[key]
        group = self._file.require_group(key)
        for arr in prepared:
            if arr.chunk is not None:
                ds = group.create_dataset(arr.name, arr.shape, arr.dtype, chunks=arr.shape,
                                          shuffle=self._shuffles(arr.dtype), **self._filter)
                ds.id.write_direct_chunk((0,) * len(arr.shape), arr.chunk)
            elif self._filter and arr.data is not None and arr.data.size:
                group.create_dataset(arr.name, data=arr.data, chunks=arr.shape, **self._filter)
            else:
                group.create_dataset(arr.name, data=arr.data)
        self._file_keys.append(key)
        self.written += 1
        due = len(self._file_keys) >= min(self.commit_every, self.samples_per_file) or (
            self.commit_seconds is not None
            and time.monotonic() - self._opened_at >= self.commit_seconds)
        if due:
            self._commit_locked()

    def _open_shard(self) -> None:
        self._file_idx = self._next_idx
        self._next_idx += 1
        path = self.directory / (shard_name(self._file_idx) + PARTIAL_SUFFIX)
        self._file = h5py.File(path, "w")
        self._file_keys = []
        self._opened_at = time.monotonic()

    def commit(self) -> None:
        """Wait for queued samples, then make everything written so far durable."""
        self._flush_queue()
        with self._lock:
            self._commit_locked()
        self._raise_pending_error()

    def _commit_locked(self) -> None:
        try:
            self._commit_shard()
        except Exception as exc:
            if not is_disk_full(exc, self.directory):
                raise
            where = self._abandon_shard() if self._file is not None else self.index.path
            raise disk_full(where) from None

    def _commit_shard(self) -> None:
        if self._file is None:
            return
        f, keys = self._file, self._file_keys
        f.create_dataset(KEYS_DATASET, data=np.array(keys, dtype=object),
                         dtype=h5py.string_dtype())
        f.attrs.update({"format": FORMAT_VERSION, "use_float16": self.use_float16,
                        "compression": self.compression, **self.attrs})
        partial = Path(f.filename)
        f.close()
        self._file = None
        with open(partial, "rb") as fh:
            os.fsync(fh.fileno())
        final = self.directory / shard_name(self._file_idx)
        os.replace(partial, final)  # the commit: rqf's readers read this shard from now on
        _fsync_dir(self.directory)
        emptied = set()
        for key in keys:
            before = self._committed.get(key)
            if before is None:
                row = self.index.table.position(key)
                before = int(self.index.table.file_idx[row]) if row >= 0 else None
            if before is not None and before != self._file_idx:
                self._counts[before] -= 1
                if not self._counts[before]:
                    emptied.add(before)
            self._committed[key] = self._file_idx
            self._pending_keys.discard(key)
        self._counts[self._file_idx] = len(set(keys))
        self.index.current_file_idx, self.index.current_file_count = self._file_idx, len(keys)
        for file_idx in emptied:
            # every sample of that shard now lives in a newer one; readers that opened it
            # keep their handle, the name is gone
            del self._counts[file_idx]
            (self.directory / shard_name(file_idx)).unlink(missing_ok=True)

    def _save_index(self) -> None:
        """Fold what this writer committed into the index files (the seed's JSON and rqf's)."""
        if self._committed:
            self.index.table = self.index.table.updated(list(self._committed),
                                                        list(self._committed.values()))
            self._committed = {}
            self.index.save()

    def _flush_queue(self) -> None:
        if self._thread is None:
            return
        done = threading.Event()
        self._queue.put(done)  # type: ignore[arg-type]
        done.wait()

    def _raise_pending_error(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            if isinstance(err, RqfError):
                raise err
            raise RqfError(f"{self.directory}: writing failed: {type(err).__name__}: {err}") from err

    def close(self) -> None:
        """Write what is queued, commit it and stop the workers."""
        try:
            self._flush_queue()
            with self._lock:
                self._commit_locked()
                if self._error is None:
                    try:
                        self._save_index()
                    except Exception as exc:
                        if not is_disk_full(exc, self.directory):
                            raise
                        raise disk_full(self.index.path) from None
        finally:
            if self._thread is not None:
                self._queue.put(None)
                self._thread.join()
                self._thread = None
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            self._folder_lock.release()
        self._raise_pending_error()

    def __enter__(self) -> "ShardedCacheWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
