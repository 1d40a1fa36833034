"""Audio in for ``rqf speech extract``: what to read (a folder, a list of paths, a Lhotse
manifest), reading it as mono float32 at the model's rate, and the 80-bin log-mel.

Every file's header is read before anything is written, so a file that cannot be opened, is
empty or too short is refused in one line naming it, not found hours into a job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rqf import DataError
from rqf_h5_speech.cache import check_key

AUDIO_SUFFIXES = (".wav", ".flac")
LHOTSE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")


@dataclass
class AudioItem:
    """One utterance to extract: its cache key, where it is, and its length in seconds."""

    key: str
    path: str
    seconds: float
    cut: Any = None  # a Lhotse cut, read through Lhotse


def _soundfile():
    try:
        import soundfile
    except ImportError:
        raise DataError("rqf speech extract reads audio with soundfile: "
                        "pip install 'rqf-h5-speech[extract]'") from None
    return soundfile


def _header(path: Path) -> tuple[int, int]:
    """(frames, sample rate) from the file's header, or a one-line refusal."""
    try:
        info = _soundfile().info(str(path))
    except Exception as exc:  # soundfile's LibsndfileError, RuntimeError, OSError
        raise DataError(f"{path}: not a readable audio file ({str(exc).strip() or type(exc).__name__})"
                        ) from None
    return int(info.frames), int(info.samplerate)


def _key_of(path: Path, root: Path) -> str:
    rel = path.relative_to(root).as_posix()
    for suffix in AUDIO_SUFFIXES:
        if rel.lower().endswith(suffix):
            return rel[: -len(suffix)]
    return rel.rsplit(".", 1)[0]


def list_audio(source: Path) -> list[AudioItem]:
    """The utterances of ``source``: a folder (every .wav/.flac under it, keyed by its path
    relative to the folder, without extension: the original tools' key shape), a text file
    with one path a line (or ``KEY<TAB>PATH``; relative paths are relative to the list's
    folder; keys relative to the files' common folder) or a Lhotse cut or recording manifest
    (keyed by the cut or recording id). Sorted by key; two files with one key are refused."""
    source = Path(source)
    if source.is_dir():
        paths = sorted(p for p in source.rglob("*")
                       if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
        if not paths:
            raise DataError(f"{source}: no audio files (.wav, .flac) in the folder")
        items = [(_key_of(p, source), p) for p in paths]
    elif not source.is_file():
        raise DataError(f"{source}: no such folder or manifest")
    elif source.name.lower().endswith(LHOTSE_SUFFIXES):
        return _lhotse_items(source)
    else:
        items = _listed(source)
    seen: dict[str, Path] = {}
    out = []
    for key, path in items:
        check_key(key, str(source))
        if key in seen:
            raise DataError(f"{source}: {seen[key]} and {path} would both be stored as "
                            f"{key!r}; keep one of them")
        seen[key] = path
        frames, rate = _header(path)
        if frames == 0:
            raise DataError(f"{path}: holds no samples")
        out.append(AudioItem(key, str(path), frames / rate))
    return sorted(out, key=lambda item: item.key)


def _listed(manifest: Path) -> list[tuple[str, Path]]:
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{manifest}: not a readable list of audio paths ({exc})") from None
    keyed: list[tuple[str | None, Path]] = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, tab, path = line.partition("\t")
        if not tab:
            key, path = None, line  # type: ignore[assignment]
        p = Path(path.strip())
        p = p if p.is_absolute() else manifest.parent / p
        if not p.is_file():
            raise DataError(f"{manifest}: line {n}: no audio file {p}")
        keyed.append((key.strip() if key else None, p))
    if not keyed:
        raise DataError(f"{manifest}: lists no audio files (one path a line, or KEY<TAB>PATH)")
    unkeyed = [p for k, p in keyed if k is None]
    root = Path(os.path.commonpath([str(p.resolve().parent) for p in unkeyed])) if unkeyed else None
    return [(k if k is not None else _key_of(p.resolve(), root), p)  # type: ignore[arg-type]
            for k, p in keyed]


def _lhotse_items(manifest: Path) -> list[AudioItem]:
    try:
        from lhotse import load_manifest_lazy
    except ImportError:
        raise DataError(f"{manifest}: a Lhotse manifest is read through lhotse: "
                        "pip install lhotse") from None
    try:
        entries = list(load_manifest_lazy(manifest))
    except Exception as exc:
        raise DataError(f"{manifest}: not a Lhotse cut or recording manifest "
                        f"({type(exc).__name__}: {exc})") from None
    out, seen = [], set()
    for entry in entries:
        if not hasattr(entry, "load_audio") or not hasattr(entry, "duration"):
            raise DataError(f"{manifest}: holds {type(entry).__name__} entries; expected cuts "
                            "or recordings")
        key = check_key(str(entry.id), str(manifest))
        if key in seen:
            raise DataError(f"{manifest}: the id {key!r} appears twice")
        seen.add(key)
        if not entry.duration or entry.duration <= 0:
            raise DataError(f"{manifest}: {key!r} has no audio (duration {entry.duration})")
        out.append(AudioItem(key, str(manifest), float(entry.duration), cut=entry))
    if not out:
        raise DataError(f"{manifest}: the manifest is empty")
    return sorted(out, key=lambda item: item.key)


def load_audio(item: AudioItem, rate: int) -> np.ndarray:
    """The utterance as mono float32 at ``rate`` Hz (channels averaged; resampled with soxr)."""
    try:
        if item.cut is not None:
            data = np.asarray(item.cut.load_audio(), dtype=np.float32)  # (channels, samples)
            data, source_rate = data.mean(0) if data.ndim == 2 else data, int(item.cut.sampling_rate)
        else:
            data, source_rate = _soundfile().read(item.path, dtype="float32", always_2d=True)
            data = data.mean(1)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{item.path}: reading {item.key!r} failed ({type(exc).__name__}: "
                        f"{exc})") from None
    if source_rate != rate:
        try:
            import soxr
        except ImportError:
            raise DataError(f"{item.path}: {source_rate} Hz audio is resampled to {rate} Hz "
                            "with soxr: pip install 'rqf-h5-speech[extract]'") from None
        data = soxr.resample(data, source_rate, rate)
    return np.ascontiguousarray(data, dtype=np.float32)


class LogMel:
    """80-bin log-mel spectrogram at the model's hop, as a (1, T, 80) array: Hann window of
    ``n_fft`` samples, reflect padding of (n_fft - hop) / 2 on each side (about one frame more
    than the model's features, as the original tools store), Slaney mel filters (from
    transformers) up to ``fmax``, natural log of the magnitude floored at 1e-5."""

    def __init__(self, sample_rate: int, hop: int, n_mels: int = 80, n_fft: int = 1024,
                 fmin: float = 0.0, fmax: float | None = None) -> None:
        import torch
        from transformers.audio_utils import mel_filter_bank

        self.sample_rate, self.hop, self.n_mels, self.n_fft = sample_rate, hop, n_mels, n_fft
        self.fmin, self.fmax = fmin, float(fmax or sample_rate / 2)
        bank = mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels,
                               min_frequency=fmin, max_frequency=self.fmax,
                               sampling_rate=sample_rate, norm="slaney", mel_scale="slaney")
        self.bank = torch.from_numpy(np.asarray(bank, dtype=np.float32))  # (freqs, mels)
        self.window = torch.hann_window(n_fft)

    @property
    def settings(self) -> dict[str, Any]:
        return {"mel_bins": self.n_mels, "mel_n_fft": self.n_fft, "mel_hop": self.hop,
                "mel_fmin": self.fmin, "mel_fmax": self.fmax, "mel_scale": "slaney, log"}

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(audio)[None, None]
        pad = (self.n_fft - self.hop) // 2
        mode = "reflect" if x.shape[-1] > pad else "constant"
        x = torch.nn.functional.pad(x, (pad, pad), mode=mode)[0, 0]
        if x.shape[-1] < self.n_fft:
            x = torch.nn.functional.pad(x, (0, self.n_fft - x.shape[-1]))
        spec = torch.stft(x, self.n_fft, hop_length=self.hop, window=self.window, center=False,
                          return_complex=True).abs()  # (freqs, T)
        mel = torch.log(torch.clamp(self.bank.T @ spec, min=1e-5))
        return mel.T[None].numpy()  # (1, T, n_mels)

