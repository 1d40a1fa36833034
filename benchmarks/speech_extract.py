"""Throughput of ``rqf speech extract``: seconds of audio per second and padding share.

Writes ``--utterances`` synthetic utterances (1 to 12 s, half at 16 kHz, half at 24 kHz so
half are resampled), builds randomly initialised w2v-BERT 2.0 models from their configuration
(no weights are downloaded: "tiny" and a "small" one of 4 layers of width 256; pass
``--model NAME_OR_FOLDER`` for a real one) and extracts the cache with each setting, one run
after another; every run starts from an empty cache. Padding share is the part of the model's
frames that is padding: with batches sorted by length (what extract does) and, for
comparison, with the same batch sizes in file order.

    python benchmarks/speech_extract.py --utterances 200 --threads 2
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import peak_rss_mb, print_table  # noqa: E402


def make_audio(root: Path, n: int, seed: int = 0) -> float:
    import soundfile

    rng = np.random.default_rng(seed)
    total = 0.0
    for i in range(n):
        rate = 16000 if i % 2 == 0 else 24000
        seconds = float(rng.uniform(1, 12))
        t = np.arange(int(seconds * rate)) / rate
        x = 0.2 * np.sin(2 * np.pi * rng.uniform(100, 300) * t) + 0.02 * rng.normal(size=t.size)
        (root / f"spk{i % 10}").mkdir(parents=True, exist_ok=True)
        soundfile.write(root / f"spk{i % 10}" / f"utt{i:05d}.wav", x.astype(np.float32), rate)
        total += seconds
    return total


def make_model(folder: Path, width: int, layers: int, heads: int) -> Path:
    import torch
    from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig, Wav2Vec2BertModel

    torch.manual_seed(0)
    config = Wav2Vec2BertConfig(hidden_size=width, num_hidden_layers=layers,
                                num_attention_heads=heads, intermediate_size=4 * width,
                                output_hidden_size=width)
    Wav2Vec2BertModel(config).save_pretrained(folder)
    SeamlessM4TFeatureExtractor().save_pretrained(folder)
    return folder


def file_order_padding(items, batch_seconds: float) -> float:
    """Padding share of batches of the sorted run's sizes taken in file order."""
    from rqf_h5_speech.extract import by_length

    sizes = [len(b) for b in by_length(items, batch_seconds)]
    order = sorted(items, key=lambda it: it.key)
    real = padded = 0.0
    for size in sizes:
        batch, order = order[:size], order[size:]
        real += sum(it.seconds for it in batch)
        padded += len(batch) * max(it.seconds for it in batch)
    return 1 - real / padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (pinned)")
    parser.add_argument("--model", default=None, help="a real model instead of the built ones")
    parser.add_argument("--layer", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-seconds", type=float, nargs="+", default=[30.0, 120.0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    import torch

    from rqf_h5_speech.audio import list_audio
    from rqf_h5_speech.extract import extract

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="rqf-extract-bench-"))
    try:
        audio_seconds = make_audio(work / "audio", args.utterances)
        items = list_audio(work / "audio")
        models = [(args.model, args.layer or 17)] if args.model else [
            (str(make_model(work / "tiny", 32, 3, 2)), 2),
            (str(make_model(work / "small", 256, 4, 4)), 3)]
        rows = []
        for model, layer in models:
            for batch_seconds in args.batch_seconds:
                for workers in args.workers:
                    out = work / "cache"
                    shutil.rmtree(out, ignore_errors=True)
                    started = time.perf_counter()
                    report = extract(work / "audio", out, model, layer, workers=workers,
                                     batch_seconds=batch_seconds, device=args.device,
                                     progress=False)
                    wall = time.perf_counter() - started
                    rows.append([Path(model).name, layer, batch_seconds, workers,
                                 report["device"], round(audio_seconds / wall, 1),
                                 report["audio_seconds_per_second"], report["padding_share"],
                                 round(file_order_padding(items, batch_seconds), 3),
                                 round(wall, 1), round(peak_rss_mb(), 0)])
        print_table(["model", "layer", "batch s", "workers", "device", "audio s/s (whole)",
                     "audio s/s (extraction)", "padding (sorted)", "padding (file order)",
                     "wall s", "peak RSS MB"], rows,
                    f"rqf speech extract: {args.utterances} utterances, {audio_seconds:.0f} s "
                    f"of audio, torch threads {args.threads}")
        print("whole: from the command's start (file headers, model loading, statistics "
              "included); extraction: reading, the model and writing alone")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
