"""Convert a per-sample ``.npz`` cache into the sharded format, then verify it sample by sample."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from rqf import DataError
from rqf_h5_speech.storage import H5ShardedStorage
from rqf_h5_speech.writer import ShardedCacheWriter


def npz_keys(source: Path) -> dict[str, Path]:
    """Sample key (path below ``source`` without .npz, '/'-separated) -> file."""
    source = Path(source)
    if not source.is_dir():
        raise DataError(f"{source}: not a directory of .npz files")
    return {p.relative_to(source).with_suffix("").as_posix(): p
            for p in sorted(source.rglob("*.npz"))}


def load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {name: z[name] for name in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None


REQUIRED = "hidden_states"
# names a feature extractor may use for what the cache calls mel_spectrogram
MEL_ALIASES = ("mel", "mels", "mel_spec", "melspec", "mel_spectrogram_80")


def cache_arrays(path: Path, arrays: dict[str, np.ndarray],
                 rename: Mapping[str, str]) -> dict[str, np.ndarray]:
    """One .npz's arrays under the cache's names; a sample the cache could not use is an error."""
    out = {rename.get(name, name): a for name, a in arrays.items()}
    if REQUIRED not in out:
        raise DataError(f"{path}: no {REQUIRED} array (found {', '.join(sorted(arrays))}); "
                        "rename the feature array with --rename NAME=hidden_states")
    alias = next((n for n in MEL_ALIASES if n in out), None)
    if alias and "mel_spectrogram" not in out:
        raise DataError(f"{path}: array {alias!r} would be stored as it is, but the cache's mel is "
                        f"named mel_spectrogram; pass --rename {alias}=mel_spectrogram (or "
                        f"--rename {alias}={alias}_raw to keep it unread)")
    return out


def migrate_npz(source: str | Path, target: str | Path, samples_per_file: int = 20000,
                use_float16: bool = True, compression: str = "none", compression_level: int = 4,
                num_workers: int = 2, verify: bool = True, progress: bool = True,
                rename: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Write every ``<key>.npz`` below ``source`` into a sharded cache at ``target``.

    Samples already in ``target`` are skipped, so an interrupted migration resumes. Every
    sample needs ``hidden_states``; ``rename`` maps an .npz array name to the cache's (an
    array called ``mel`` is refused unless renamed: the cache's mel is ``mel_spectrogram``).
    """
    from tqdm.auto import tqdm

    files = npz_keys(Path(source))
    if not files:
        raise DataError(f"{source}: no .npz files found")
    writer = ShardedCacheWriter(target, samples_per_file=samples_per_file, use_float16=use_float16,
                                compression=compression, compression_level=compression_level,
                                num_workers=num_workers, on_duplicate="skip")
    with writer:
        for key, path in tqdm(files.items(), desc="migrating", unit="sample", disable=not progress):
            if key not in writer:
                writer.write(key, cache_arrays(path, load_npz(path), rename or {}))
    report: dict[str, Any] = {"source_samples": len(files), "written": writer.written,
                              "already_present": len(files) - writer.written}
    if verify:
        report.update(verify_migration(files, Path(target), progress, rename or {}))
    return report


def verify_migration(files: dict[str, Path], target: Path, progress: bool = True,
                     rename: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every source sample is in the cache with the same arrays, shapes and (float16) values."""
    from tqdm.auto import tqdm

    with H5ShardedStorage(str(target)) as storage:
        missing = sorted(set(files) - set(storage.keys))
        if missing:
            raise DataError(f"{target}: {len(missing)} samples missing after migration, e.g. "
                            f"{missing[:3]}")
        worst = 0.0
        for key, path in tqdm(files.items(), desc="verifying", unit="sample", disable=not progress):
            original = cache_arrays(path, load_npz(path), rename or {})
            stored = storage.read(key)
            if set(original) != set(stored):
                raise DataError(f"{target}: sample {key!r} has arrays {sorted(stored)}, the .npz "
                                f"has {sorted(original)}")
            for name, a in original.items():
                b = stored[name]
                if a.shape != b.shape:
                    raise DataError(f"{target}: sample {key!r}: {name} has shape {b.shape}, the "
                                    f".npz has {a.shape}")
                if not np.array_equal(a.astype(b.dtype), b):
                    raise DataError(f"{target}: sample {key!r}: {name} differs from the .npz "
                                    "beyond float16 rounding")
                if a.size and a.dtype.kind == "f":
                    worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
        return {"verified": len(files), "max_abs_error": worst}
