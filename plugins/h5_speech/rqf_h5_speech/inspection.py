"""``rqf inspect`` for a sharded cache: layout, sizes, T distribution and every inconsistency."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from rqf import DataError, InspectReport
from rqf_h5_speech.cache import KEYS_DATASET, CacheIndex, shard_problems
from rqf_h5_speech.featstats import STATS_NAME
from rqf_h5_speech.shards import SampleArrays

T_TOLERANCE = 2  # mel is about one frame longer than the semantic features
FEATURE = "hidden_states"
MEL = "mel_spectrogram"
MEL_BINS = 80
CODES = "semantic_codes"
PROVENANCE = ("model", "layer", "sample_rate", "hop_length", "normalization")  # extract's
INSPECT_SAMPLES = 2000  # samples ``rqf inspect`` reads without --full, evenly spread


def spread(n: int, at_most: int | None) -> np.ndarray:
    """Up to ``at_most`` indices evenly spread over ``range(n)`` (all of them for None)."""
    if at_most is None or n <= at_most:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, at_most).round().astype(np.int64))


def sample_problems(arrays: SampleArrays, feature: str = FEATURE, dim: int | None = None,
                    values: bool = True) -> list[str]:
    """Everything wrong with one sample: the feature (T, dim) float with T >= 1 and the
    expected width, a mel of 80 bins within two frames of T, and (``values``) no NaN or Inf.

    Shapes and dtypes come from the file's metadata; ``values`` reads the arrays.
    """
    where = f"{arrays.filename}: sample {arrays.key!r}"
    if feature not in arrays and CODES in arrays:  # a token cache that rqf exported
        shape, dtype = arrays.shape(CODES), arrays.dtype(CODES)
        if dtype.kind not in "iu" or len(shape) != 2:
            return [f"{where}: {CODES} must be (T, levels) integers, found {dtype} {shape}"]
        return []
    if feature not in arrays:
        return [f"{where}: no {feature} array (found {', '.join(sorted(arrays.datasets))})"]
    shape, dtype = arrays.shape(feature), arrays.dtype(feature)
    problems = []
    if dtype.kind != "f":
        problems.append(f"{where}: {feature} has dtype {dtype}, expected float16, float32 or "
                        "float64")
    if len(shape) != 2:
        problems.append(f"{where}: {feature} must be (T, dim), found shape {shape}")
    elif shape[0] == 0 or shape[1] == 0:
        problems.append(f"{where}: {feature} is empty, shape {shape}")
    elif dim is not None and shape[1] != dim:
        problems.append(f"{where}: {feature} is {shape[1]}-wide, the cache's other samples are "
                        f"{dim}-wide")
    if MEL in arrays:
        mshape, mdtype = arrays.shape(MEL), arrays.dtype(MEL)
        if mdtype.kind != "f":
            problems.append(f"{where}: {MEL} has dtype {mdtype}, expected float")
        if len(mshape) < 2 or any(n != 1 for n in mshape[:-2]) or mshape[-1] != MEL_BINS:
            problems.append(f"{where}: {MEL} must be (T, {MEL_BINS}) or (1, T, {MEL_BINS}), "
                            f"found shape {mshape}")
        elif len(shape) == 2 and abs(mshape[-2] - shape[0]) > T_TOLERANCE:
            problems.append(f"{where}: {feature} has {shape[0]} frames but {MEL} has "
                            f"{mshape[-2]}")
    if values and not problems:
        for name in (feature, MEL):
            if name in arrays:
                bad = int((~np.isfinite(arrays.read(name))).sum())
                if bad:
                    problems.append(f"{where}: {name} holds {bad} NaN or Inf values")
    return problems


@dataclass
class _Seen:
    """What the samples read so far have in common: their lengths, dtypes, codecs, width."""

    lengths: list[int] = field(default_factory=list)
    dtypes: set[str] = field(default_factory=set)
    codecs: set[str] = field(default_factory=set)
    dim: int | None = None
    shapes: dict[str, set[str]] = field(default_factory=dict)  # per array, T written as T
    made_by: dict[str, Any] = field(default_factory=dict)  # a shard's provenance attributes


def inspect_cache(directory: Path, full: bool = False) -> InspectReport:
    """Shards, sizes, the T distribution and every problem of a cache; ``full`` reads every
    sample's values, else an evenly spread few."""
    report = InspectReport(f"{directory}: sharded feature cache")
    try:
        index = CacheIndex.load(directory)
    except DataError as exc:
        report.problems.append(str(exc))
        return report
    counts = index.shard_counts()
    on_disk = index.shards_on_disk()
    report.lines.append(f"samples: {len(index.table)}, shards referenced: {len(counts)}, "
                        f"shard files: {len(on_disk)}, samples_per_file: {index.samples_per_file}, "
                        f"use_float16: {index.use_float16}")
    report.lines.append("index: hdf5_index.keys.h5, in sync with hdf5_index.json"
                        if index.source == "keys" else
                        "index: hdf5_index.json (rqf's hdf5_index.keys.h5 is absent or older)")
    if index.journal:
        report.lines.append(f"journal: {len(index.journal)} shards committed after the index "
                            "files were written (a writer is running, or was stopped before "
                            "closing); rqf reads them, the original tools do not until "
                            "`rqf speech finalize`")
    total = sum(p.stat().st_size for p in on_disk.values() if p.exists())
    report.lines.append(f"size on disk: {total / 1e6:.1f} MB")
    report.problems += shard_problems(index)
    keys = index.table
    chosen = {keys[i] for i in spread(len(keys), None if full else INSPECT_SAMPLES)}
    by_shard: dict[int, list[tuple[str, str]]] = {}
    for row, (key, file_idx) in enumerate(zip(keys, keys.file_idx.tolist())):
        by_shard.setdefault(file_idx, []).append((key, keys.group(row)))
    seen = _Seen()
    for file_idx in sorted(set(counts) & set(on_disk)):
        path = on_disk[file_idx]
        report.lines.append(f"  {path.name}: {counts[file_idx]} samples, "
                            f"{path.stat().st_size / 1e6:.1f} MB")
        _inspect_shard(path, by_shard.get(file_idx, []), chosen, report, seen)
    report.lines.append(f"dtypes: {', '.join(sorted(seen.dtypes)) or '-'}; compression: "
                        f"{', '.join(sorted(seen.codecs)) or '-'}")
    if seen.shapes:
        report.lines.append("arrays: " + ", ".join(
            f"{name} {' or '.join(sorted(shapes)[:3])}"
            + (f" (and {len(shapes) - 3} more shapes)" if len(shapes) > 3 else "")
            for name, shapes in sorted(seen.shapes.items())))
    made_by = {k: v for k, v in seen.made_by.items() if k in PROVENANCE}
    if made_by:
        report.lines.append("made by: " + ", ".join(f"{k} {made_by[k]}" for k in PROVENANCE
                                                    if k in made_by))
    stats = directory / STATS_NAME
    if stats.is_file():
        report.lines.append(f"normalisation statistics: {STATS_NAME} (applied by the speech "
                            "datasets with normalize: true)")
    if seen.lengths:
        q = np.percentile(seen.lengths, [0, 50, 90, 100])
        report.lines.append("frames per sample (T): min {:.0f}, median {:.0f}, p90 {:.0f}, "
                            "max {:.0f}, mean {:.1f}".format(*q, float(np.mean(seen.lengths))))
    if len(chosen) < len(keys):
        report.lines.append(f"checked {len(chosen)} of {len(keys)} samples, evenly spread "
                            "(values read: NaN/Inf); rqf inspect --full checks every one")
    else:
        report.lines.append(f"checked all {len(keys)} samples (shapes, dtypes, NaN/Inf)")
    return report


def _inspect_shard(path: Path, listed: list[tuple[str, str]], chosen: set[str],
                   report: InspectReport, seen: _Seen) -> None:
    """The shard's recorded keys against the index, and the chosen samples' arrays."""
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        report.problems.append(f"{path}: cannot be opened, truncated or corrupted "
                               f"({str(exc).splitlines()[0]})")
        return
    with f:
        if not seen.made_by:
            seen.made_by = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
        if KEYS_DATASET in f:
            stored = {k.decode() if isinstance(k, bytes) else k for k in f[KEYS_DATASET][()]}
            missing = {k for k, _ in listed} - stored
            if missing:
                report.problems.append(f"{path}: {len(missing)} indexed samples are not among "
                                       "the keys the shard recorded")
        for key, group in listed:
            if key not in chosen:
                continue
            try:
                arrays = SampleArrays(f, group, key)
            except DataError as exc:
                report.problems.append(str(exc))
                continue
            problems = sample_problems(arrays, dim=seen.dim)
            report.problems += problems
            t = arrays.shape(FEATURE)[0] if FEATURE in arrays else None
            for name in arrays.datasets:
                dims = arrays.shape(name)
                time_axis = max(len(dims) - 2, 0)  # (T, dim) and (1, T, 80)
                shape = tuple(str(n) if a != time_axis or t is None or abs(n - t) > T_TOLERANCE
                              else "T" if n == t else f"T{n - t:+d}" for a, n in enumerate(dims))
                seen.shapes.setdefault(name, set()).add(f"({', '.join(shape)})")
                seen.dtypes.add(str(arrays.dtype(name)))
                seen.codecs.add(f[group][name].compression or "none")
            if not problems and FEATURE in arrays:
                seen.dim = seen.dim or arrays.shape(FEATURE)[1]
                seen.lengths.append(arrays.shape(FEATURE)[0])
