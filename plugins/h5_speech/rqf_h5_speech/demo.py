"""A small demo speech cache with the shape of MaskGCT features.

Utterances are sequences of "phone" segments: each phone is a prototype 1024-d vector plus
noise, so a quantizer has structure to find. Keys follow LibriTTS (subset/speaker/chapter/utt),
and each mel spectrogram is one frame longer than its features, as in the real extractor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rqf import RqfError
from rqf_h5_speech.cache import SHARD_PATTERN
from rqf_h5_speech.writer import ShardedCacheWriter

DEMO_SOURCE = "rqf demo"  # the shards' "source" attribute


def check_demo(directory: Path) -> None:
    """The demo cache goes only into a new or empty folder, or the demo's own cache: never
    into another cache, whatever --force says (it would add samples to it)."""
    directory = Path(directory)
    if not directory.exists():
        return
    if not directory.is_dir():
        raise RqfError(f"{directory}: a file where rqf demo writes its speech cache; choose "
                       "another folder for the demo data")
    shards = sorted(p for p in directory.iterdir() if SHARD_PATTERN.match(p.name))
    ours = False
    if shards:
        try:
            import h5py

            with h5py.File(shards[0], "r") as f:
                ours = f.attrs.get("source") == DEMO_SOURCE
        except OSError:
            ours = False
    if not ours and any(directory.iterdir()):
        raise RqfError(f"{directory}: holds files rqf demo did not write; the demo cache goes "
                       "only into a new folder or its own: choose another folder")


def make_demo(directory: Path, seed: int = 0, speakers: int = 8, utterances_per_speaker: int = 10,
              dim: int = 1024, phones: int = 48) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(size=(phones, dim)).astype(np.float32)
    mel_prototypes = rng.normal(size=(phones, 80)).astype(np.float32)
    directory = Path(directory)
    with ShardedCacheWriter(directory, samples_per_file=32, use_float16=True,
                            compression="none", num_workers=2, on_duplicate="replace",
                            attrs={"layer": 17, "sample_rate": 16000, "hop_length": 320,
                                   "source": DEMO_SOURCE}) as writer:
        for s in range(speakers):
            speaker = 100 + s
            voice = 0.3 * rng.normal(size=dim).astype(np.float32)
            for u in range(utterances_per_speaker):
                durations = rng.integers(3, 12, size=rng.integers(8, 25))
                labels = np.repeat(rng.integers(0, phones, len(durations)), durations)
                t = len(labels)
                hidden = prototypes[labels] + voice + 0.4 * rng.normal(size=(t, dim)).astype(np.float32)
                mel_labels = np.r_[labels, labels[-1]]
                mel = mel_prototypes[mel_labels] + 0.2 * rng.normal(size=(t + 1, 80)).astype(np.float32)
                chapter = 1000 + u // 5
                key = f"train-clean-100/{speaker}/{chapter}/{speaker}_{chapter}_{u:06d}"
                writer.write(key, {"hidden_states": hidden, "mel_spectrogram": mel[None]})
    return {"speech_cache": directory}
