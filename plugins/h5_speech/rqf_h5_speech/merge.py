"""Caches written by many processes made into one, and a cache's index brought up to date.

Many GPUs or nodes (torchrun ranks, a job array) each write their own cache with their own
``ShardedCacheWriter``; ``merge_caches`` then builds one cache from them without copying a
shard: each shard gets a hard link under its new number in the new folder (same file, no
extra space), and one index lists every key. The parts are left as they were.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import h5py

from rqf import DataError, FolderLock, disk_full, is_disk_full
from rqf_h5_speech.cache import (INDEX_NAME, LOCK_NAME, PARTIAL_SUFFIX, CacheIndex, _fsync_dir,
                                 misplaced_samples, shard_name, shard_problems)
from rqf_h5_speech.keytable import KeyTable
from rqf_h5_speech.writer import ShardedCacheWriter, remove_own_files


def finalize_cache(directory: Path | str) -> dict[str, Any]:
    """Fold the shards committed since the index files were written into them (what closing
    a writer does; for a cache whose writer was killed), and report the cache."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: cache directory not found")
    # every refusal before the writer takes the folder: an index that disagrees with the
    # shards, or none beside shards that list no keys
    if (directory / INDEX_NAME).exists():
        for problem in misplaced_samples(CacheIndex.load(directory)):
            raise DataError(problem)
    elif not CacheIndex.from_shards(directory, 20000, True).shards_on_disk():
        raise DataError(f"{directory}: not a cache: no {INDEX_NAME} and no shards "
                        "(features_NNNNN.h5); finalize brings an existing cache's index up to "
                        "date")
    # the cache's own settings (None): the writer's recovery adopts what the index lost
    with ShardedCacheWriter(directory, samples_per_file=None, use_float16=None,
                            num_workers=0) as writer:
        samples = len(writer.index.table)
        shards = len(writer.index.shard_counts())
    return {"cache": str(directory), "samples": samples, "shards": shards,
            "index_updated": writer.recovered}


def merge_caches(out: Path | str, parts: Sequence[Path | str]) -> dict[str, Any]:
    """One cache in ``out`` holding every sample of ``parts`` (which stay as they are).

    Refused, before anything is written, when a part is being written (its writer lock is
    held), is inconsistent, stores another precision, or shares a key with another part.
    ``out`` is built as ``out.partial`` and renamed when complete; a merge that was killed is
    started over by the next one.
    """
    out = Path(out)
    parts = [Path(p) for p in parts]
    if not parts:
        raise DataError("merge: no parts given")
    if out.exists():
        raise DataError(f"{out}: already exists; merge writes a new cache")
    if len({p.resolve() for p in parts}) != len(parts):
        raise DataError("merge: a part is named twice")
    for part in parts:  # the parts stay as they were: nothing is written into one
        if part.resolve() in out.resolve().parents:
            raise DataError(f"{out}: inside the part {part}; the merged cache goes beside "
                            "its parts, never into one")
    locks = []
    try:
        for part in parts:
            if not part.is_dir():
                raise DataError(f"{part}: cache directory not found")
            locks.append(FolderLock(part, "cache writer", LOCK_NAME).acquire())
        indexes = [CacheIndex.load(part) for part in parts]
        for index in indexes:
            for problem in shard_problems(index) + misplaced_samples(index):
                raise DataError(problem)
        _refuse_other_shapes(parts, indexes)
        precisions = {index.use_float16 for index in indexes}
        if len(precisions) > 1:
            which = ", ".join(f"{p} ({'float16' if i.use_float16 else 'float32'})"
                              for p, i in zip(parts, indexes))
            raise DataError(f"merge: the parts store different precisions: {which}")
        tables, file_idx, links, next_idx = [], [], [], 1
        for part, index in zip(parts, indexes):
            counts = index.shard_counts()
            old = np.array(sorted(counts), np.int64)  # numbers may be sparse: 1, 2, 10**9
            for number in old.tolist():
                links.append((part / shard_name(number), next_idx, counts[number]))
                next_idx += 1
            new = np.arange(next_idx - len(old), next_idx, dtype=np.int64)
            tables.append(index.table)
            file_idx.append(new[np.searchsorted(old, np.asarray(index.table.file_idx))]
                            if len(index.table) else np.zeros(0, np.int64))
        table = KeyTable.concatenate(tables, file_idx)
        _refuse_duplicates(table, parts, indexes)
        extra = {}
        for index in indexes:
            extra.update(index.extra)
        merged = CacheIndex(out.with_name(out.name + PARTIAL_SUFFIX), table,
                            max(i.samples_per_file for i in indexes), precisions.pop(),
                            links[-1][1] if links else 0, links[-1][2] if links else 0, extra)
        _write(merged, links, out)
    finally:
        for lock in locks:
            lock.release()
    return {"cache": str(out), "parts": len(parts), "samples": len(table),
            "shards": len(links), "linked": True}


def _shapes(part: Path, index: CacheIndex) -> dict[str, tuple[int, ...]]:
    """The trailing dimensions of each array of the part's first sample (its width)."""
    if not len(index.table):
        return {}
    path = part / shard_name(int(index.table.file_idx[0]))
    with h5py.File(path, "r") as f:
        group = f.get(index.table.group(0))
        if not isinstance(group, h5py.Group):
            return {}
        return {name: tuple(ds.shape[-1:]) for name, ds in group.items()
                if isinstance(ds, h5py.Dataset)}


def _refuse_other_shapes(parts: list[Path], indexes: list[CacheIndex]) -> None:
    """Parts whose samples have arrays of other widths (a 16-d part beside a 32-d one) would
    make a cache no model reads whole."""
    seen: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for part, index in zip(parts, indexes):
        for name, shape in _shapes(part, index).items():
            first = seen.setdefault(name, (part, shape))
            if first[1] != shape:
                raise DataError(f"merge: {name} is {_width(first[1])} in {first[0]} and "
                                f"{_width(shape)} in {part}; the parts must hold the same "
                                "features")


def _width(shape: tuple[int, ...]) -> str:
    return f"{shape[0]}-wide" if shape else "a scalar"


def _refuse_duplicates(table: KeyTable, parts: list[Path], indexes: list[CacheIndex]) -> None:
    duplicates = table.duplicates()
    if duplicates:
        key = duplicates[0]
        holders = [str(p) for p, i in zip(parts, indexes) if key in i.table]
        raise DataError(f"merge: sample key {key!r} is in {' and '.join(holders)}"
                        f"{f' ({len(duplicates)} keys are in more than one part)' if len(duplicates) > 1 else ''}; "
                        "each sample must come from one part")


def _write(index: CacheIndex, links: list[tuple[Path, int, int]], out: Path) -> None:
    partial = index.directory
    partial.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(partial, "cache merge", LOCK_NAME).acquire()
    failed = False
    try:
        remove_own_files(partial)  # a merge killed before: only files a merge makes
        try:
            for source, new_idx, _ in links:
                try:
                    os.link(source, partial / shard_name(new_idx))
                except OSError as exc:
                    if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                        raise DataError(
                            f"{out}: cannot link {source} into it ({exc.strerror}); merge links "
                            "shards instead of copying them, so the new cache must be on the "
                            "same file system as its parts") from None
                    raise
            index.save()
            _fsync_dir(partial)
        except BaseException as exc:
            remove_own_files(partial)  # links and index files: the parts keep every shard
            failed = True
            if isinstance(exc, Exception) and is_disk_full(exc, partial):
                raise disk_full(partial) from None
            raise
    finally:
        lock.release()
        if failed:
            for name in (LOCK_NAME, LOCK_NAME + ".holder"):
                (partial / name).unlink(missing_ok=True)
            try:
                partial.rmdir()
            except OSError:
                pass
    os.replace(partial, out)
    _fsync_dir(out.parent)
