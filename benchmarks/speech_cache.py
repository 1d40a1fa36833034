"""Sharded speech-cache writes and reads against the original layouts, in one table.

Generates utterances shaped like MaskGCT features (hidden_states (T, 1024), mel (1, T+1, 80),
T uniform in 100..1000, float16 on disk) and measures, in the same run:

* writes: samples/s and MB/s with 1, 2 and 4 workers for the original tool's writer (one
  lock around every write, gzip 4) and rqf's writer for each codec, each the median of
  ``--repeats`` interleaved runs, with the speed-up over 1 worker; beside them, zlib alone
  on the same arrays in 1, 2 and 4 threads: what this machine's cores allow at best;
* reads: one uncompressed .npz per sample, a plain h5py loop over the gzip-4 cache, rqf's
  reader over every codec, and batches of 8 through a plain torch DataLoader (with
  ``collate_utterances``) and through rqf's ``UtteranceLoader``, with 0, 1 and 2 workers;
  bytes on disk for each. The loaders' consumer touches every page of each batch, as a copy
  to a device would.

    python benchmarks/speech_cache.py --utterances 2000
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import zlib
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import print_table  # noqa: E402

from rqf_h5_speech import (H5ShardedStorage, ShardedCacheWriter, UtteranceLoader,  # noqa: E402
                           UtterancesDataset, collate_utterances)

try:
    import hdf5plugin  # noqa: F401  (registers the filters)
    PLUGIN_CODECS = ["zstd", "lz4"]
except ImportError:
    PLUGIN_CODECS = []


class Samples:
    """Deterministic utterances made on the fly from a pool, so memory stays small."""

    def __init__(self, n: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.lengths = rng.integers(100, 1001, n)
        self.keys = [f"train-clean-100/{100 + i % 40}/{1000 + i % 7}/{100 + i % 40}_{i:06d}"
                     for i in range(n)]
        # features: smooth over time plus noise, like real ones (they barely compress)
        base = rng.standard_normal((1100, 1024)).astype(np.float32)
        self.hidden = (np.cumsum(base, 0) / 30 + base).astype(np.float32)
        self.mel = rng.standard_normal((1101, 80)).astype(np.float32)

    def __len__(self) -> int:
        return len(self.keys)

    def get(self, i: int) -> dict[str, np.ndarray]:
        t = int(self.lengths[i])
        shift = i % 50
        return {"hidden_states": self.hidden[shift:shift + t],
                "mel_spectrogram": self.mel[shift:shift + t + 1][None]}


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def decoded_mb(samples: Samples, idx) -> float:
    return sum(int(samples.lengths[i]) * (1024 + 80) * 2 for i in idx) / 1e6


# --- the original tool's writer: one lock around every write ---------------------------------

class LockedWriter:
    def __init__(self, directory: Path, per_file: int = 20000) -> None:
        self.directory, self.per_file = directory, per_file
        directory.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.index, self.file_idx, self.count, self.f = {}, 0, 0, None

    def write(self, key: str, data: dict) -> None:
        with self.lock:
            if self.f is None or self.count >= self.per_file:
                if self.f is not None:
                    self.f.close()
                self.file_idx, self.count = self.file_idx + 1, 0
                self.f = h5py.File(self.directory / f"features_{self.file_idx:05d}.h5", "a")
            g = self.f.create_group(key)
            for name, value in data.items():
                g.create_dataset(name, data=value.astype(np.float16), compression="gzip",
                                 compression_opts=4)
            self.index[key] = {"file_idx": self.file_idx, "group_name": key}
            self.count += 1

    def close(self) -> None:
        self.f.close()
        (self.directory / "hdf5_index.json").write_text(json.dumps({
            "sample_index": self.index, "current_file_idx": self.file_idx,
            "current_file_count": self.count, "samples_per_file": self.per_file,
            "use_float16": True}))


def write_original(directory: Path, samples: Samples, idx, workers: int) -> float:
    w = LockedWriter(directory)
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda i: w.write(samples.keys[i], samples.get(i)), idx))
    w.close()
    return time.perf_counter() - start


def write_rqf(directory: Path, samples: Samples, idx, codec: str, workers: int) -> float:
    start = time.perf_counter()
    with ShardedCacheWriter(directory, compression=codec, num_workers=workers,
                            samples_per_file=20000) as w:
        for i in idx:
            w.write(samples.keys[i], samples.get(i))
    return time.perf_counter() - start


def write_npz(directory: Path, samples: Samples) -> float:
    start = time.perf_counter()
    for i in range(len(samples)):
        path = directory / f"{samples.keys[i]}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {k: v.astype(np.float16) for k, v in samples.get(i).items()}
        np.savez(path, **data)
    return time.perf_counter() - start


# --- reads ---------------------------------------------------------------------------------

def read_plain_h5py(directory: Path) -> tuple[int, float]:
    index = json.loads((directory / "hdf5_index.json").read_text())["sample_index"]
    files = {}
    start = time.perf_counter()
    for key, entry in index.items():
        idx = entry["file_idx"]
        if idx not in files:
            files[idx] = h5py.File(directory / f"features_{idx:05d}.h5", "r")
        g = files[idx][entry["group_name"]]
        g["hidden_states"][()]
        g["mel_spectrogram"][()]
    seconds = time.perf_counter() - start
    for f in files.values():
        f.close()
    return len(index), seconds


def read_rqf(directory: Path) -> tuple[int, float]:
    with H5ShardedStorage(str(directory)) as s:
        start = time.perf_counter()
        for key in s.keys:
            s.read(key)
        return len(s.keys), time.perf_counter() - start


def read_npz(directory: Path) -> tuple[int, float]:
    files = sorted(directory.rglob("*.npz"))
    start = time.perf_counter()
    for p in files:
        with np.load(p) as z:
            z["hidden_states"]
            z["mel_spectrogram"]
    return len(files), time.perf_counter() - start


def touch(batch: dict) -> None:
    """Read one value per KB of the batch's features: every page, as a device copy would."""
    batch["hidden_states"].view(-1)[::512].sum()


def steady_pass(loader) -> tuple[int, float]:
    """One pass to start the workers, then the timed pass (workers persist)."""
    for _ in range(2):
        start = time.perf_counter()
        n = 0
        for b in loader:
            touch(b)
            n += len(b["keys"])
    return n, time.perf_counter() - start


def read_loader(directory: Path, workers: int) -> tuple[int, float]:
    import torch

    with H5ShardedStorage(str(directory)) as s:
        return steady_pass(torch.utils.data.DataLoader(
            UtterancesDataset(s), batch_size=8, num_workers=workers,
            collate_fn=collate_utterances, persistent_workers=workers > 0))


def read_utterance_loader(directory: Path, workers: int) -> tuple[int, float]:
    with H5ShardedStorage(str(directory)) as s:
        return steady_pass(UtteranceLoader(UtterancesDataset(s), batch_size=8,
                                           num_workers=workers))


def zlib_alone(samples: Samples, idx, threads: int) -> float:
    arrays = [{k: np.ascontiguousarray(v, np.float16) for k, v in samples.get(i).items()}
              for i in idx]
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda d: [zlib.compress(a.reshape(-1).view(np.uint8), 4)
                                 for a in d.values()], arrays))
    return time.perf_counter() - start


def timed_read(fn, directory: Path, *args) -> tuple[int, float]:
    if fn not in (read_loader, read_utterance_loader):  # these make their own warm-up pass
        fn(directory, *args)  # warm the page cache
    return fn(directory, *args)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--utterances", type=int, default=2000)
    p.add_argument("--write-samples", type=int, default=300, help="samples per write-scaling run")
    p.add_argument("--repeats", type=int, default=3, help="runs per write configuration")
    p.add_argument("--part", choices=["all", "writes", "reads"], default="all")
    p.add_argument("--workdir", default="/tmp/rqf-bench-speech")
    args = p.parse_args()
    root = Path(args.workdir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    samples = Samples(args.utterances)
    all_idx = range(len(samples))
    total_mb = decoded_mb(samples, all_idx)
    print(f"{len(samples)} utterances, T 100..1000, {total_mb:,.0f} MB decoded float16; "
          f"plugin codecs: {PLUGIN_CODECS or 'none (pip install hdf5plugin)'}")

    if args.part != "reads":
        measure_writes(args, root, samples)
    if args.part != "writes":
        measure_reads(root, samples, total_mb)


def measure_writes(args: argparse.Namespace, root: Path, samples: Samples) -> None:
    w_idx = range(min(args.write_samples, len(samples)))
    w_mb = decoded_mb(samples, w_idx)
    configs = [("zlib 4 alone (this machine's ceiling)", "gzip 4", None),
               ("original (one lock)", "gzip 4", None)] + \
        [("rqf", codec + (" 4" if codec == "gzip" else ""), codec)
         for codec in ["none", "gzip", "lzf", *PLUGIN_CODECS]]
    seconds: dict[tuple[int, int], list[float]] = {}
    for _ in range(args.repeats):  # interleaved, so a slow spell of the machine hits all
        for c, (writer, _, codec) in enumerate(configs):
            for workers in (1, 2, 4):
                d = root / f"w_{c}_{workers}"
                if writer.startswith("zlib"):
                    took = zlib_alone(samples, w_idx, workers)
                elif codec is None:
                    took = write_original(d, samples, w_idx, workers)
                else:
                    took = write_rqf(d, samples, w_idx, codec, workers)
                seconds.setdefault((c, workers), []).append(took)
                shutil.rmtree(d, ignore_errors=True)
    write_rows = []
    for c, (writer, label, _) in enumerate(configs):
        one = statistics.median(seconds[(c, 1)])
        for workers in (1, 2, 4):
            took = statistics.median(seconds[(c, workers)])
            write_rows.append([writer, label, workers, len(w_idx) / took, w_mb / took,
                               f"{one / took:.2f}x"])
    print_table(["writer", "codec", "workers", "samples/s", "MB/s", "vs 1 worker"], write_rows,
                f"writes ({len(w_idx)} samples, float16, fsync at commit; median of "
                f"{args.repeats} runs)")



def measure_reads(root: Path, samples: Samples, total_mb: float) -> None:
    all_idx = range(len(samples))
    read_rows = []

    def add(layout: str, directory: Path, fn, *extra) -> None:
        n, s = timed_read(fn, directory, *extra)
        read_rows.append([layout, dir_bytes(directory) / 1e6,
                          sum(1 for q in directory.rglob("*") if q.is_file()), n / s, total_mb / s])

    d = root / "npz"
    write_npz(d, samples)
    add("npz, one file per sample", d, read_npz)
    shutil.rmtree(d)
    d = root / "orig_gzip"
    write_original(d, samples, all_idx, 2)
    add("gzip 4 (original tool), plain h5py loop", d, read_plain_h5py)
    add("gzip 4 (original tool), rqf reader", d, read_rqf)
    for workers in (0, 2):
        add(f"gzip 4 (original tool), UtteranceLoader {workers} workers", d,
            read_utterance_loader, workers)
    shutil.rmtree(d)
    for codec in ["none", "lzf", *PLUGIN_CODECS]:
        d = root / f"rqf_{codec}"
        write_rqf(d, samples, all_idx, codec, 2)
        add(f"rqf {codec}, rqf reader", d, read_rqf)
        if codec == "none":
            add("rqf none, plain h5py loop", d, read_plain_h5py)
            for workers in (0, 1, 2):
                add(f"rqf none, torch DataLoader {workers} workers", d, read_loader, workers)
            for workers in (0, 1, 2):
                add(f"rqf none, UtteranceLoader {workers} workers", d, read_utterance_loader,
                    workers)
        shutil.rmtree(d)
    print_table(["layout / reader", "MB on disk", "files", "samples/s", "MB/s decoded"], read_rows,
                "reads (warm page cache)")


if __name__ == "__main__":
    main()
