"""``rqf inspect`` for a sharded cache: layout, sizes, T distribution and every inconsistency."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from rqf import InspectReport
from rqf.errors import DataError
from rqf_h5_speech.cache import KEYS_DATASET, CacheIndex, shard_name

T_TOLERANCE = 2  # mel is about one frame longer than the semantic features


def frame_counts(group: h5py.Group) -> dict[str, int]:
    out = {}
    for name, ds in group.items():
        if isinstance(ds, h5py.Dataset) and ds.ndim >= 2:
            out[name] = ds.shape[-2] if name.startswith("mel") and ds.ndim == 3 else ds.shape[0]
    return out


def inspect_cache(directory: Path, max_samples: int = 20000) -> InspectReport:
    report = InspectReport(f"{directory}: sharded feature cache")
    try:
        index = CacheIndex.load(directory)
    except DataError as exc:
        report.problems.append(str(exc))
        return report
    counts = index.shard_counts()
    on_disk = {int(p.name[9:-3]): p for p in index.shard_files()}
    report.lines.append(f"samples: {len(index.entries)}, shards referenced: {len(counts)}, "
                        f"shard files: {len(on_disk)}, samples_per_file: {index.samples_per_file}, "
                        f"use_float16: {index.use_float16}")
    total = sum(p.stat().st_size for p in on_disk.values())
    report.lines.append(f"size on disk: {total / 1e6:.1f} MB")
    by_shard: dict[int, list[tuple[str, str]]] = {}
    for key, (file_idx, group) in index.entries.items():
        by_shard.setdefault(file_idx, []).append((key, group))
    lengths, dtypes, codecs = [], set(), set()
    checked = 0
    for file_idx in sorted(set(counts) | set(on_disk)):
        path = directory / shard_name(file_idx)
        n = counts.get(file_idx, 0)
        if file_idx not in on_disk:
            report.problems.append(f"{path}: listed in the index for {n} samples but missing")
            continue
        size = on_disk[file_idx].stat().st_size / 1e6
        report.lines.append(f"  {path.name}: {n} samples, {size:.1f} MB")
        if n == 0:
            report.problems.append(f"{path}: shard is not in the index")
        if n > index.samples_per_file:
            report.problems.append(f"{path}: holds {n} samples, more than samples_per_file "
                                   f"{index.samples_per_file}")
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            report.problems.append(f"{path}: cannot be opened, truncated or corrupted "
                                   f"({str(exc).splitlines()[0]})")
            continue
        with f:
            if KEYS_DATASET in f and n:
                stored = {k.decode() if isinstance(k, bytes) else k for k in f[KEYS_DATASET][()]}
                listed = {k for k, _ in by_shard.get(file_idx, [])}
                if listed - stored:
                    report.problems.append(f"{path}: {len(listed - stored)} indexed samples are "
                                           "not among the keys the shard recorded")
            for key, group in by_shard.get(file_idx, []):
                if checked >= max_samples:
                    break
                checked += 1
                if group not in f or not isinstance(f[group], h5py.Group):
                    report.problems.append(f"{path}: sample {key!r}: group {group!r} is missing")
                    continue
                frames = frame_counts(f[group])
                for ds in f[group].values():
                    if isinstance(ds, h5py.Dataset):
                        dtypes.add(str(ds.dtype))
                        codecs.add(ds.compression or "none")
                if "hidden_states" in frames:
                    lengths.append(frames["hidden_states"])
                    mel = frames.get("mel_spectrogram")
                    if mel is not None and abs(mel - frames["hidden_states"]) > T_TOLERANCE:
                        report.problems.append(
                            f"{path}: sample {key!r}: hidden_states has {frames['hidden_states']} "
                            f"frames but mel_spectrogram has {mel}")
    report.lines.append(f"dtypes: {', '.join(sorted(dtypes)) or '-'}; compression: "
                        f"{', '.join(sorted(codecs)) or '-'}")
    if lengths:
        q = np.percentile(lengths, [0, 50, 90, 100])
        report.lines.append("frames per sample (T): min {:.0f}, median {:.0f}, p90 {:.0f}, "
                            "max {:.0f}, mean {:.1f}".format(*q, float(np.mean(lengths))))
    if checked < len(index.entries):
        report.lines.append(f"checked the first {checked} samples of {len(index.entries)}")
    return report
