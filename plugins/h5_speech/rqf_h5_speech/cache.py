"""The sharded cache format: index, shard names, key rules (shards are read by ``shards``).

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
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import h5py
import numpy as np

from rqf import DataError, atomic_path, disk_full
from rqf_h5_speech.keyhash import hash_keys
from rqf_h5_speech.keytable import KeyTable, encode_keys, first_bad_key

INDEX_NAME = "hdf5_index.json"
KEYS_INDEX_NAME = "hdf5_index.keys.h5"  # rqf's copy of the index, as arrays
SHARD_PATTERN = re.compile(r"^features_(\d{5,})\.h5$")
KEYS_DATASET = "_rqf_sample_keys"  # written by rqf: the keys a shard holds, for recovery
KEYS_INDEX_FORMAT = "rqf-keys-index-1"
JSON_CHUNK = 100_000  # keys written to the JSON index per step
PARTIAL_SUFFIX = ".partial"  # a shard being written, renamed into place when it is whole
LOCK_NAME = ".rqf-writer.lock"
# every file a cache writer makes in its folder (the index, rqf's arrays, shards whole and being
# written, the writer's lock): what a run that writes a token cache claims as its own
CACHE_FILES = (INDEX_NAME, KEYS_INDEX_NAME, "features_*.h5", f"features_*.h5{PARTIAL_SUFFIX}",
               LOCK_NAME)


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
    """The keys an rqf shard recorded when it was committed (None: a shard of other tools,
    which list none). A shard that cannot be read is an error, never a shard with no samples:
    dropping it would drop its samples from the index."""
    try:
        with h5py.File(path, "r") as f:
            if KEYS_DATASET not in f:
                return None
            return [k.decode() if isinstance(k, bytes) else str(k)
                    for k in f[KEYS_DATASET][()]]
    except (OSError, KeyError) as exc:
        raise DataError(f"{path}: shard cannot be read ({str(exc).splitlines()[0][:120]}); it "
                        "may be truncated or corrupted: restore it, or move it out of the "
                        "cache to go on without its samples") from None


def held_where_indexed(index: "CacheIndex", keys: list[str],
                       listed: dict[int, set[str] | None]) -> list[bool]:
    """For each key, whether the index lists it and the shard it names holds it (``listed``:
    the keys of the shards read so far, by shard number, filled as shards are read)."""
    out = []
    for key in keys:
        row = index.table.position(key)
        if row < 0:
            out.append(False)
            continue
        file_idx = int(index.table.file_idx[row])
        path = index.directory / shard_name(file_idx)
        if file_idx not in listed:
            names = read_shard_keys(path) if path.exists() else []
            listed[file_idx] = None if names is None else set(names)
        held = listed[file_idx]
        if held is None:  # another tool's shard: look the group up
            with h5py.File(path, "r") as f:
                out.append(index.table.group(row) in f)
        else:
            out.append(key in held)
    return out


def misplaced_samples(index: "CacheIndex") -> list[str]:
    """Where the index names a shard that does not hold the sample: one line per shard, with
    the shard that does where one lists it. An rqf shard is checked against the keys it lists
    (by their hashes, a shard at a time: memory follows the shard, not the cache), another
    tool's by looking its groups up."""
    table, problems = index.table, []
    fidx = np.asarray(table.file_idx)
    order = np.argsort(fidx, kind="stable")
    by_shard = fidx[order]
    row_hash = table.hashes_unsorted()
    for file_idx, path in index.shards_on_disk().items():
        lo, hi = np.searchsorted(by_shard, [file_idx, file_idx + 1])
        if lo == hi:
            continue  # listed nowhere: the writer adopts or removes it
        rows = order[lo:hi]
        keys = read_shard_keys(path)
        if keys is not None:
            held = np.isin(row_hash[rows], hash_keys(*encode_keys(keys))) if keys else \
                np.zeros(len(rows), bool)
            missing = [table[int(r)] for r in rows[~held][:1]]
            count = int((~held).sum())
        else:
            with h5py.File(path, "r") as f:
                gone = [int(r) for r in rows if table.group(int(r)) not in f]
            missing, count = [table[r] for r in gone[:1]], len(gone)
        if count:
            holder = next((p.name for p in index.shards_on_disk().values()
                           if missing[0] in (read_shard_keys(p) or ())), None)
            problems.append(f"{index.path}: puts {count} samples in {path.name} that it "
                            f"does not hold (e.g. {missing[0]!r}"
                            f"{f', which {holder} holds' if holder else ''}); the index "
                            "disagrees with the shards: restore it")
    return problems


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
    def from_shards(cls, directory: Path, samples_per_file: int,
                    use_float16: bool) -> "CacheIndex":
        """The index of a cache without index files, from the keys its shards list (every
        shard rqf commits lists them); refused when a shard lists none (the original tools'),
        whose samples it would leave out."""
        index = cls.empty(directory, samples_per_file, use_float16)
        index.read_journal()
        foreign = [p.name for i, p in index.shards_on_disk().items() if i not in index.journal]
        if foreign:
            raise DataError(f"{index.path}: missing, and {len(foreign)} shards list no keys "
                            f"(e.g. {foreign[0]}, written by other tools): their samples "
                            "cannot be indexed from them; restore the index")
        return index

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
        the JSON is read; the shards of the journal are in both. Both are sized first: a disk
        without room for them is refused before either is begun (HDF5 that meets a full disk
        half-way fails in its destructors, not in one line).
        """
        table = self.table
        keys_bytes = len(table.blob) + (len(table.groups[0]) if table.groups is not None else 0)
        need = 2 * keys_bytes + len(table) * (40 + 8 * 4) + (1 << 16)
        free = shutil.disk_usage(self.directory).free
        if need > free:
            raise disk_full(f"{self.path} and {KEYS_INDEX_NAME} (about {need / 1e6:.1f} MB "
                            f"needed, {free / 1e6:.1f} MB free)")
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
