"""``rqf speech extract``: audio to a MaskGCT feature cache.

Each utterance gives ``hidden_states`` (T, D), one layer of a speech model loaded through
transformers (w2v-BERT 2.0 by default), and ``mel_spectrogram`` (1, T, 80) at the same hop,
both cut to the shorter length, written through ``ShardedCacheWriter`` under the key of the
original tools (the path relative to the audio folder, without extension). Batches are sorted
by length so little is padding; audio is read and turned into model input by worker processes
while the model runs.

Resumable: every key already committed is skipped, so a killed job started again extracts
only what is missing. Under ``torchrun`` each rank takes a disjoint, duration-balanced share of
the files and writes its own cache in ``OUT.parts/rank-NNNNN``; when every rank is done,
rank 0 builds ``OUT`` from the parts with ``merge_caches`` (hard links, nothing copied). The
parts are the record of what was extracted: a later run with more files or another number of
ranks extracts only the missing keys and builds ``OUT`` again.

The cache holds the layer as the model gives it; its normalisation statistics (mean, var) are
kept beside it in ``feature_stats.npz``, which the speech datasets apply with
``normalize: true``.
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator, Sequence

import h5py
import numpy as np

from rqf import DataError, atomic_path
from rqf_h5_speech.audio import AudioItem, LogMel, list_audio, load_audio
from rqf_h5_speech.cache import INDEX_NAME, SHARD_PATTERN, CacheIndex
from rqf_h5_speech.featstats import STATS_NAME, cache_stats, read_stats, save_stats

SETTINGS = ("model", "layer", "sample_rate", "hop_length")  # a resumed cache must agree


class Encoder:
    """A speech model's chosen layer, with its feature extractor, on one device."""

    def __init__(self, name: str, layer: int, device: str = "cpu", dtype: str = "auto") -> None:
        import torch
        try:
            from transformers import AutoFeatureExtractor, AutoModel
        except ImportError:
            raise DataError("rqf speech extract loads the model with transformers: "
                            "pip install 'rqf-h5-speech[extract]'") from None
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()  # a failed load is this command's one line, not a log
        try:
            from huggingface_hub.utils import logging as hub_logging

            hub_logging.set_verbosity_error()
        except ImportError:
            pass
        try:
            self.features = AutoFeatureExtractor.from_pretrained(name)
            model = AutoModel.from_pretrained(name)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DataError(f"--model {name}: cannot be loaded ({first})") from None
        layers = getattr(getattr(model, "encoder", None), "layers", None)
        count = int(getattr(model.config, "num_hidden_layers", 0))
        if layers is None or not count:
            raise DataError(f"--model {name}: a {type(model).__name__} has no encoder layers "
                            "to take hidden states from")
        if not 0 <= layer <= count:
            raise DataError(f"--layer {layer}: {name} has layers 0 (its input projection) to "
                            f"{count}")
        model.encoder.layers = layers[:layer]  # the layers after the chosen one never run
        self.name, self.layer, self.model = name, layer, model
        self.rate = int(self.features.sampling_rate)
        self.hop = self._hop(model)
        self.device = torch.device(device)
        if dtype == "auto":
            dtype = "float16" if self.device.type == "cuda" else "float32"
        self.dtype = getattr(torch, dtype)
        self.model.eval().to(self.device, self.dtype)
        self.width = int(model.config.hidden_size)

    def _hop(self, model: Any) -> int:
        fe = self.features
        if hasattr(fe, "stride") and hasattr(fe, "num_mel_bins"):  # w2v-BERT: 10 ms fbank
            return int(fe.stride) * self.rate // 100  # frames, stacked ``stride`` at a time
        strides = getattr(model.config, "conv_stride", None)  # wav2vec 2.0, HuBERT
        if strides:
            return int(np.prod(strides))
        raise DataError(f"--model {self.name}: cannot tell the model's hop (frames per sample)")

    def inputs(self, audios: Sequence[np.ndarray]) -> dict[str, Any]:
        return dict(self.features(list(audios), sampling_rate=self.rate, return_tensors="pt",
                                  padding=True, return_attention_mask=True))

    def __call__(self, inputs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """(B, T, D) float32 hidden states of the layer and each utterance's valid frames."""
        import torch

        batch = {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                 for k, v in inputs.items()}
        with torch.inference_mode():
            out = self.model(**batch, output_hidden_states=True)
        hidden = out.hidden_states[self.layer]
        mask = inputs["attention_mask"]
        lengths = mask.sum(1)
        if mask.shape[1] != hidden.shape[1]:  # a mask over samples (wav2vec 2.0)
            lengths = self.model._get_feat_extract_output_lengths(lengths)
        return hidden.float().cpu().numpy(), lengths.cpu().numpy().astype(int)


class _Batches:
    """Worker side: each batch's audio read, resampled, turned into model input and mels."""

    def __init__(self, batches: list[list[AudioItem]], encoder: Encoder, mel: LogMel) -> None:
        self.batches, self.features, self.rate, self.mel = batches, encoder.features, \
            encoder.rate, mel

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[list[AudioItem], dict[str, Any], list[np.ndarray]]:
        items = self.batches[i]
        audios = [load_audio(item, self.rate) for item in items]
        inputs = dict(self.features(audios, sampling_rate=self.rate, return_tensors="pt",
                                    padding=True, return_attention_mask=True))
        return items, inputs, [self.mel(a) for a in audios]


def _as_is(batch: Any) -> Any:
    return batch


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)


def by_length(items: Sequence[AudioItem], batch_seconds: float) -> list[list[AudioItem]]:
    """Batches of utterances of similar length, longest first, each at most
    ``batch_seconds`` of padded audio (a longer utterance goes alone)."""
    batches: list[list[AudioItem]] = []
    for item in sorted(items, key=lambda it: (-it.seconds, it.key)):
        if batches and batches[-1][0].seconds * (len(batches[-1]) + 1) <= batch_seconds:
            batches[-1].append(item)
        else:
            batches.append([item])
    return batches


def shares(items: Sequence[AudioItem], world: int) -> list[list[AudioItem]]:
    """A disjoint share of the files for each rank, balanced by duration (longest first, each
    to the least-loaded rank). It depends only on the file list and the number of ranks."""
    loads, out = [0.0] * world, [[] for _ in range(world)]  # type: list[float], list[list[AudioItem]]
    for item in sorted(items, key=lambda it: (-it.seconds, it.key)):
        rank = loads.index(min(loads))
        out[rank].append(item)
        loads[rank] += item.seconds
    return out


def _is_cache(directory: Path) -> bool:
    from rqf_h5_speech.storage import H5ShardedStorage

    return H5ShardedStorage.recognizes(directory)


def _cache_keys(directory: Path) -> set[str]:
    if not directory.is_dir() or not _is_cache(directory):
        return set()
    index = CacheIndex.load(directory) if (directory / INDEX_NAME).exists() else \
        CacheIndex.from_shards(directory, 20000, True)
    return set(index.table)


def _settings_of(directory: Path) -> dict[str, Any] | None:
    """The extraction settings a cache's shards record (None: no shard yet)."""
    if not directory.is_dir():
        return None
    for shard in sorted(p for p in directory.iterdir() if SHARD_PATTERN.match(p.name)):
        try:
            with h5py.File(shard, "r") as f:
                return {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
        except OSError:
            continue
    return None


def _check_same_settings(directories: Sequence[Path], attrs: dict[str, Any]) -> None:
    for directory in directories:
        found = _settings_of(directory)
        if found is None:
            continue
        for name in SETTINGS:
            if name in found and str(found[name]) != str(attrs[name]):
                raise DataError(f"{directory}: extracted with {name} {found[name]!r}, this run "
                                f"asks for {attrs[name]!r}; one cache holds one setting "
                                "(choose another OUT)")


def _rebuild_from_parts(out: Path, parts: Sequence[Path]) -> None:
    """OUT made anew from every part: merged beside it, then swapped in."""
    from rqf_h5_speech.merge import merge_caches

    fresh, old = out.with_name(f".{out.name}.next"), out.with_name(f".{out.name}.old")
    for stale in (fresh, old):
        if stale.exists():
            shutil.rmtree(stale)  # rqf's own, from a rebuild that was cut off
    merge_caches(fresh, parts)
    if out.exists():
        os.rename(out, old)
    os.rename(fresh, out)
    if old.exists():
        shutil.rmtree(old)  # hard links of the parts' shards and rqf's index files


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def extract(source: Path, out: Path, model: str, layer: int = 17, *,
            batch_seconds: float = 120.0, device: str = "auto", dtype: str = "auto",
            workers: int | None = None, save_workers: int = 2, samples_per_file: int = 20000,
            compression: str = "gzip", stats: str = "sample", stats_utterances: int = 2000,
            barrier_hours: float = 48.0, progress: bool = True) -> dict[str, Any] | None:
    """Extract every utterance of ``source`` not yet in ``out`` (see the module docstring);
    the report of every rank, returned by rank 0 (None on the others)."""
    import torch

    out = Path(out)
    rank, world = _distributed()
    parts_dir = out.with_name(out.name + ".parts")
    ranked = world > 1 or parts_dir.exists()
    # every check first: the files, the model, the folders, the settings
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not _is_cache(out):
        raise DataError(f"{out}: a folder that is not a feature cache; extract into a new or "
                        "an existing cache folder")
    if ranked and out.is_dir() and _is_cache(out) and not parts_dir.exists():
        raise DataError(f"{out}: written by one process; extract into it without torchrun, or "
                        "choose a new OUT for a run over several ranks")
    stats_file = None
    if stats not in ("sample", "all", "none"):
        stats_file = Path(stats)
    if device == "auto":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise DataError("--device: 'cuda' was asked for, but no CUDA device is available")
    items = list_audio(Path(source))
    encoder = Encoder(model, layer, device, dtype)
    if stats_file is not None:
        read_stats(stats_file, encoder.width)
    shortest = 2 * encoder.hop / encoder.rate  # what gives the model one frame, with margin
    short = [item for item in items if item.seconds < shortest]
    if short:
        raise DataError(f"{short[0].path}: {short[0].key!r} lasts {short[0].seconds:.3f} s, "
                        f"under the {shortest:.3f} s that give one frame"
                        + (f" ({len(short)} such files)" if len(short) > 1 else "")
                        + "; leave them out with a list of paths")
    mel = LogMel(encoder.rate, encoder.hop)
    if workers is None:  # on a GPU audio is read beside the model; on a CPU the model needs
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # every core
        workers = 0 if encoder.device.type == "cpu" else min(4, (os.cpu_count() or 1) // local)
    attrs = {"model": model, "layer": layer, "sample_rate": encoder.rate,
             "hop_length": encoder.hop, "hidden_size": encoder.width,
             "normalization": f"none (the layer as the model gives it; mean and var in "
                              f"{STATS_NAME})", **mel.settings}
    parts = sorted(p for p in parts_dir.glob("rank-*") if p.is_dir()) if ranked else []
    target = parts_dir / f"rank-{rank:05d}" if ranked else out
    _check_same_settings([out, *parts], attrs)
    done: set[str] = set()
    for directory in (parts if ranked else [out]):
        done |= _cache_keys(directory)
    share = shares(items, world)[rank] if world > 1 else items
    todo = [item for item in share if item.key not in done]
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo", timeout=timedelta(hours=barrier_hours))
    report = _run(todo, target, encoder, mel, attrs, batch_seconds, workers, save_workers,
                  samples_per_file, compression, progress and rank == 0, write=bool(todo)
                  or not ranked)
    report.update({"files": len(items), "already_done": len(share) - len(todo)})
    if world > 1:  # every rank's part is closed (a barrier): rank 0 builds OUT from them
        everyone: list[Any] = [None] * world
        dist.all_gather_object(everyone, report)
        report = _combined(everyone)
    changed = report["extracted"] > 0 or not (out / INDEX_NAME).exists()
    if rank == 0 and ranked and changed:
        parts = [p for p in sorted(parts_dir.glob("rank-*")) if _cache_keys(p)]
        if parts:
            _rebuild_from_parts(out, parts)
    if rank == 0 and (changed or stats_file is not None or not (out / STATS_NAME).exists()):
        report["stats"] = _write_stats(out, stats, stats_file, stats_utterances, attrs)
    if world > 1:
        dist.destroy_process_group()
    if rank != 0:
        return None
    report.update({"cache": str(out), "ranks": world, "device": str(encoder.device)})
    return report


def _combined(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report for every rank: counts and audio added up, the slowest rank's seconds."""
    total = {k: sum(r[k] for r in reports) for k in ("extracted", "audio_seconds",
                                                     "already_done")}
    wall = max(r["wall_seconds"] for r in reports)
    frames = sum(r["frames"] for r in reports)
    padded = sum(r["padded_frames"] for r in reports)
    return {**total, "files": reports[0]["files"], "wall_seconds": wall,
            "audio_seconds_per_second": round(total["audio_seconds"] / wall, 2) if wall else None,
            "padding_share": round(1 - frames / padded, 4) if padded else 0.0,
            "frames": frames, "padded_frames": padded}


def _run(todo: list[AudioItem], target: Path, encoder: Encoder, mel: LogMel,
         attrs: dict[str, Any], batch_seconds: float, workers: int, save_workers: int,
         samples_per_file: int, compression: str, progress: bool,
         write: bool = True) -> dict[str, Any]:
    from rqf_h5_speech.writer import ShardedCacheWriter

    started = time.perf_counter()
    frames = padded = 0
    seconds = 0.0
    if not write:  # nothing for this rank, and no part of its own to make
        return {"extracted": 0, "audio_seconds": 0.0, "wall_seconds": 0.0,
                "audio_seconds_per_second": None, "padding_share": 0.0, "frames": 0,
                "padded_frames": 0}
    bar = _bar(sum(it.seconds for it in todo), progress)
    with ShardedCacheWriter(target, samples_per_file=samples_per_file, use_float16=True,
                            compression=compression, num_workers=save_workers,
                            on_duplicate="error", attrs=attrs) as writer:
        for items, inputs, mels in _loaded(by_length(todo, batch_seconds), encoder, mel, workers):
            hidden, lengths = encoder(inputs)
            padded += hidden.shape[0] * hidden.shape[1]
            for item, h, n, m in zip(items, hidden, lengths, mels):
                t = int(min(n, m.shape[1]))
                if t < 1:
                    raise DataError(f"{item.path}: {item.key!r} is too short for one frame "
                                    f"({item.seconds:.3f} s)")
                writer.write(item.key, {"hidden_states": h[:t], "mel_spectrogram": m[:, :t]})
                frames += int(n)
                seconds += item.seconds
                bar.update(item.seconds)
    bar.close()
    wall = time.perf_counter() - started
    return {"extracted": len(todo), "audio_seconds": round(seconds, 2),
            "wall_seconds": round(wall, 2),
            "audio_seconds_per_second": round(seconds / wall, 2) if wall else None,
            "padding_share": round(1 - frames / padded, 4) if padded else 0.0,
            "frames": frames, "padded_frames": padded}


def _loaded(batches: list[list[AudioItem]], encoder: Encoder, mel: LogMel,
            workers: int) -> Iterator[tuple[list[AudioItem], dict[str, Any], list[np.ndarray]]]:
    from torch.utils.data import DataLoader

    data = _Batches(batches, encoder, mel)
    if workers <= 0:
        yield from (data[i] for i in range(len(data)))
        return
    yield from DataLoader(data, batch_size=None, shuffle=False, num_workers=workers,
                          collate_fn=_as_is, worker_init_fn=_worker_init,
                          prefetch_factor=2, persistent_workers=False)


def _bar(total: float, show: bool):
    from tqdm import tqdm

    return tqdm(total=round(total, 1), unit="s audio", disable=not show, dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}]")


def _write_stats(out: Path, how: str, given: Path | None, utterances: int,
                 attrs: dict[str, Any]) -> str | None:
    """feature_stats.npz in OUT: copied from a given file, or computed from the cache."""
    if how == "none" or not (out / INDEX_NAME).exists():
        return None
    path = out / STATS_NAME
    if given is not None:
        mean, std = read_stats(given, int(attrs["hidden_size"]))
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, mean=mean, var=std * std, std=std, frames=0, utterances=0,
                         feature="hidden_states", source=str(given))
        return str(path)
    running = cache_stats(out, "hidden_states", None if how == "all" else utterances)
    save_stats(path, running, feature="hidden_states", model=attrs["model"], layer=attrs["layer"])
    return str(path)

