"""Speech datasets over a sharded cache: whole utterances, and frames for a quantizer."""

from __future__ import annotations

import copy
import os
import zlib
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from rqf import DataError, Dataset, KeyedArrays, Param, SequenceVectors, require
from rqf_h5_speech.shards import SampleArrays
from rqf_h5_speech.inspection import sample_problems, spread
from rqf_h5_speech.cache import PARTIAL_SUFFIX
from rqf_h5_speech.featstats import RunningStats, read_stats, save_stats, stored_stats
from rqf_h5_speech.writer import ShardedCacheWriter

COMMON_PARAMS = (
    Param("feature", str, "hidden_states", "array of each sample to learn from"),
    Param("normalize", bool, False, "standardise features with per-dimension mean/std"),
    Param("stats_file", "path", None, "where the mean/std statistics are kept (.npz, or a "
          "torch .pt with mean and var): read when present, computed in one pass and saved "
          "when not (null: the cache's own feature_stats.npz when it has one, else computed "
          "in memory)",
          nullable=True),
)


CHECKED_AT_BUILD = 256  # samples whose values are read when a dataset is built


class SpeechDataset(Dataset):
    """Shared parts of the speech datasets: keys, feature reading, normalisation."""

    sample_unit = "utterances"

    def __init__(self, storage: KeyedArrays, feature: str = "hidden_states",
                 normalize: bool = False, stats_file: str | None = None,
                 keys: list[str] | None = None, stats: tuple[np.ndarray, np.ndarray] | None = None,
                 **params: Any) -> None:
        require(storage, KeyedArrays, "dataset.type", repr(self.name))
        super().__init__(storage, feature=feature, normalize=normalize, stats_file=stats_file,
                         **params)
        self.storage: KeyedArrays = storage
        self.where = str(getattr(storage, "directory", None) or storage.name)
        self.feature = feature
        source = storage.keys if keys is None else keys
        # a cache's keys stay arrays (KeyTable): no str per key, shared by worker processes
        self.keys: Sequence[str] = source if hasattr(source, "take") else list(source)
        if not len(self.keys):
            raise DataError(f"{self.where}: the cache holds no samples")
        self._dim = self._feature_dim()
        if keys is None:  # the whole cache, once: views share what was checked
            self._check_spread(CHECKED_AT_BUILD)
        self.stats = stats
        if normalize and stats is None:
            self.stats = self._load_or_compute_stats(stats_file)

    def _feature_dim(self) -> int:
        arrays = self._arrays(0)  # metadata only: nothing is read
        problems = sample_problems(arrays, self.feature, values=False)
        if problems:
            raise DataError(problems[0])
        return int(arrays.shape(self.feature)[1])

    def _check_spread(self, at_most: int) -> None:
        """Shapes, dtypes and values of up to ``at_most`` samples spread over the cache, so
        ``rqf validate`` finds a broken cache; every sample is checked again when read."""
        for i in spread(len(self.keys), at_most):
            problems = sample_problems(self._arrays(i), self.feature, self._dim)
            if problems:
                raise DataError(problems[0])

    def _arrays(self, i: int) -> SampleArrays:
        """The arrays of sample ``i``: by row when the keys are the storage's own table."""
        keys = self.keys
        if getattr(keys, "table", keys) is getattr(self.storage, "keys", None) \
                and hasattr(self.storage, "arrays_at"):
            return self.storage.arrays_at(keys.row(i))  # type: ignore[attr-defined]
        return self.storage.arrays(keys[i])

    def _frames(self, key: str, arrays: SampleArrays) -> int:
        """T of one sample's feature, after checking its shapes and dtypes (metadata only)."""
        problems = sample_problems(arrays, self.feature, self._dim, values=False)
        if problems:
            raise DataError(problems[0])
        return arrays.shape(self.feature)[0]

    def _finite(self, key: str, name: str, values: np.ndarray) -> np.ndarray:
        if not np.isfinite(values).all():
            raise DataError(f"{self.where}: sample {key!r}: {name} holds "
                            f"{int((~np.isfinite(values)).sum())} NaN or Inf values")
        return values

    def features(self, key: str, as_float32: bool = True) -> np.ndarray:
        """(T, dim) features of one sample (only that array is read), normalised when asked.

        Without normalisation and with ``as_float32=False`` the stored dtype (float16) is kept.
        """
        arrays = self.storage.arrays(key)
        self._frames(key, arrays)
        arr = self._finite(key, self.feature, arrays.read(self.feature))
        if self.stats is not None:
            return (arr.astype(np.float32) - self.stats[0]) / self.stats[1]
        return arr.astype(np.float32) if as_float32 else arr

    def _load_or_compute_stats(self, stats_file: str | None) -> tuple[np.ndarray, np.ndarray]:
        path = Path(stats_file) if stats_file else None
        if path is not None and path.exists():
            return read_stats(path, self._dim)  # .npz (mean, std or var) or MaskGCT's .pt
        directory = getattr(self.storage, "directory", None)
        if path is None and directory is not None:  # what `rqf speech extract` stored
            kept = stored_stats(directory, self.feature, self._dim)
            if kept is not None:
                return kept
        running = RunningStats()
        for key in self.storage.keys:  # one streaming pass, one sample in memory at a time
            running.add(self.features(key, as_float32=False))
        mean, var = running.mean_var()
        stats = (mean.astype(np.float32), np.sqrt(var).astype(np.float32))
        if path is not None:
            save_stats(path, running, feature=self.feature)
        return stats

    def __len__(self) -> int:
        return len(self.keys)

    def key_ids(self) -> np.ndarray:
        return np.array(self.keys, dtype=object)

    def _clone(self, keys: Sequence[str]) -> "SpeechDataset":
        # a view shares storage, width and statistics: no sample is read again to build it
        view = copy.copy(self)
        view.keys = keys
        return view

    def subset(self, indices: np.ndarray, role: str = "train") -> "SpeechDataset":
        indices = np.asarray(indices, dtype=np.int64)
        if hasattr(self.keys, "take"):
            view = self._clone(self.keys.take(indices))  # type: ignore[attr-defined]
        else:
            view = self._clone([self.keys[i] for i in indices])
        view.role = role
        return view

    def export_source(self) -> SequenceVectors:
        index = getattr(self.storage, "index", None)
        samples_per_file = index.samples_per_file if index else 20000

        def open_writer(out_dir: Path, meta: dict[str, Any]) -> "CodesWriter":
            return CodesWriter(Path(out_dir), samples_per_file, meta)

        return SequenceVectors(keys=self.storage.keys, read=self.features,
                               open_writer=open_writer)


class CodesWriter:
    """Writes each utterance's (T, levels) code matrix as ``semantic_codes``.

    The cache is written as ``<out>.partial`` and renamed to ``<out>`` once every utterance is
    in it, so a killed export never looks finished; the next export starts the partial folder
    over (under its writer lock, deleting only the files the writer makes). ``out`` itself is
    never overwritten.
    """

    def __init__(self, out_dir: Path, samples_per_file: int, meta: dict[str, Any]) -> None:
        self.out_dir = Path(out_dir)
        if self.out_dir.exists():
            raise DataError(f"{self.out_dir}: already exists; tokens are written to a new folder")
        self.partial = self.out_dir.with_name(self.out_dir.name + PARTIAL_SUFFIX)
        self.writer = ShardedCacheWriter(self.partial, samples_per_file=samples_per_file,
                                         use_float16=False, compression="none", num_workers=0,
                                         attrs=meta, start_over=True)

    def write(self, key: str, codes: np.ndarray) -> None:
        self.writer.write(key, {"semantic_codes": codes})

    def __enter__(self) -> "CodesWriter":
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        self.writer.close()
        if exc_type is None:
            os.replace(self.partial, self.out_dir)


class UtterancesDataset(SpeechDataset):
    """One sample per utterance: features, mel cut to the same length, and the length."""

    name = "utterances"
    params = COMMON_PARAMS

    def __getitem__(self, index: int) -> dict[str, Any]:
        batch = self.read_batch([index])
        sample = {"key": batch["keys"][0], "length": int(batch["lengths"][0]),
                  self.feature: batch[self.feature][0]}
        if "mel" in batch:
            sample["mel"] = batch["mel"][0]
        return sample

    def read_batch(self, indices: Sequence[int],
                   allocate: Callable[[dict[str, tuple[tuple[int, ...], np.dtype]]],
                                      dict[str, np.ndarray]] | None = None) -> dict[str, Any]:
        """A padded batch: ``keys``, ``lengths``, ``mask``, the feature and ``mel``.

        Shapes are read from the files first, then each array is read straight into its row of
        the batch, so a sample is copied once. ``allocate`` gives the buffers for
        ``{name: (shape, dtype)}`` (new arrays by default); padding is zeroed here, so buffers
        may be reused. Features keep their stored dtype unless normalised (then float32); mel
        and features are cut to the shorter of the two, a gap over two frames is an error.
        """
        opened = [self._arrays(i) for i in indices]
        keys = [arrays.key for arrays in opened]
        lengths = np.empty(len(keys), np.int64)
        with_mel = "mel_spectrogram" in opened[0]
        for i, (key, arrays) in enumerate(zip(keys, opened)):
            t = self._frames(key, arrays)
            if with_mel:
                if "mel_spectrogram" not in arrays:
                    raise DataError(f"{self.where}: sample {key!r} has no "
                                    "mel_spectrogram (the others in its batch have one)")
                t = min(t, arrays.shape("mel_spectrogram")[-2])  # within T_TOLERANCE: checked
            lengths[i] = t
        t_max = int(lengths.max())
        specs = {"lengths": ((len(keys),), np.dtype(np.int64)),
                 "mask": ((len(keys), t_max), np.dtype(bool)),
                 self.feature: ((len(keys), t_max, self._dim),
                                np.dtype(np.float32) if self.stats is not None
                                else opened[0].dtype(self.feature))}
        if with_mel:
            specs["mel"] = ((len(keys), t_max, opened[0].shape("mel_spectrogram")[-1]),
                            opened[0].dtype("mel_spectrogram"))
        out = allocate(specs) if allocate else {n: np.empty(shape, dt)
                                                for n, (shape, dt) in specs.items()}
        out["lengths"][:] = lengths
        np.less(np.arange(t_max)[None, :], lengths[:, None], out=out["mask"])
        for i, arrays in enumerate(opened):
            t = lengths[i]
            if self.stats is None:
                arrays.read_into(self.feature, out[self.feature][i, :t])
            else:
                raw = np.empty((t, self._dim), arrays.dtype(self.feature))
                arrays.read_into(self.feature, raw)
                np.divide(raw - self.stats[0], self.stats[1], out=out[self.feature][i, :t])
            out[self.feature][i, t:] = 0
            if with_mel:
                try:
                    arrays.read_into("mel_spectrogram", out["mel"][i, :t])
                except DataError as exc:
                    raise DataError(f"{exc} (the batch's mel width is {specs['mel'][0][2]})") \
                        from None
                out["mel"][i, t:] = 0
        for name in (self.feature, "mel") if with_mel else (self.feature,):
            finite = np.isfinite(out[name]).reshape(len(keys), -1).all(axis=1)
            if not finite.all():
                i = int(np.flatnonzero(~finite)[0])
                self._finite(keys[i], "mel_spectrogram" if name == "mel" else name, out[name][i])
        return {"keys": keys, **out}

    def describe(self) -> dict[str, Any]:
        return {"input_dim": self._dim, "unit": "utterance", "n_samples": len(self),
                **self.storage.describe()}

    def vectors(self) -> np.ndarray:
        return np.concatenate([self.features(k) for k in self.keys])


def collate_utterances(samples: list[dict[str, Any]], feature: str = "hidden_states") -> dict[str, Any]:
    """Pad a list of utterances to the longest, with a mask so padding never enters a loss.

    For a plain ``torch.utils.data.DataLoader``; ``UtteranceLoader`` reads batches without
    this extra copy and scales with worker processes.
    """
    import torch

    t = max(s["length"] for s in samples)
    lengths = np.array([s["length"] for s in samples])
    batch: dict[str, Any] = {"keys": [s["key"] for s in samples],
                             "lengths": torch.from_numpy(lengths)}
    batch["mask"] = torch.from_numpy(np.arange(t)[None, :] < lengths[:, None])
    for name in (feature, "mel"):
        if name in samples[0]:
            first = samples[0][name]
            out = np.zeros((len(samples), t, first.shape[1]), dtype=first.dtype)
            for i, s in enumerate(samples):
                out[i, :s["length"]] = s[name]
            batch[name] = torch.from_numpy(out)  # the stored precision; .float() on the device
    return batch


class SpeechFramesDataset(SpeechDataset):
    """Frames drawn from utterances as quantizer training vectors, capped per utterance."""

    name = "speech_frames"
    params = COMMON_PARAMS + (
        Param("frames_per_utterance", int, 100,
              "at most this many frames from each utterance (long ones do not dominate)", min=1),
    )

    def _selected(self, key: str) -> np.ndarray:
        x = self.features(key)
        cap = self.config["frames_per_utterance"]
        if len(x) <= cap:
            return x
        rng = np.random.default_rng(zlib.crc32(key.encode()))  # the same frames every run
        return x[np.sort(rng.choice(len(x), cap, replace=False))]

    def __getitem__(self, index: int) -> dict[str, Any]:
        key = self.keys[index]
        return {"key": key, "frames": self._selected(key)}

    def describe(self) -> dict[str, Any]:
        return {"input_dim": self._dim, "unit": "frame", "n_samples": len(self),
                "frames_per_utterance": self.config["frames_per_utterance"],
                **self.storage.describe()}

    def vectors(self) -> np.ndarray:
        return np.concatenate([self._selected(k) for k in self.keys])
