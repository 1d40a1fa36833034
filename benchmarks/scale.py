"""Costs at catalogue scale, each beside the plain code a user would write, with the ratio.

Every case runs in its own process with torch pinned to one thread (``--threads``), so the
ratios compare like with like; ``+MB`` is the peak resident memory the step added.

    python benchmarks/scale.py                         # 10k / 100k / 1M items
    python benchmarks/scale.py --sizes 10000,100000    # a quick look
    python benchmarks/scale.py --only collisions

Tables:
  collisions  semantic-ID collision handling, 3 levels x 256 codes with about half the items
              on a shared nearest tuple: the nearest tuples plus the collision level (suffix,
              the plain reference), then reassign, balanced and optimal (with the mean
              distance of every item to its final last-level code).
  balanced    balanced assignment (Sinkhorn-Knopp, 50 iterations) of n x 256 distances beside
              a plain float32 Sinkhorn-Knopp that keeps the whole kernel in memory.
  reads       shuffled 1,024-row batches from a lazy item_data.h5 beside a sorted h5py
              selection of the same rows, and a split's vectors beside one slice read
              (--read-sizes, up to 400,000 x 768 = 1.2 GB).
  ids         write_semantic_ids beside a plain h5py write of the same arrays, and
              code_statistics beside plain numpy (one np.unique of the packed tuples and a
              bincount per level), 3 levels x 256 codes, half the items on a shared tuple.
  kmeans      rqf.codes.kmeans (k-means++ seeds, 25 iterations) beside a plain chunked
              Lloyd's from random rows, n x 32 into 256 centroids.
  tokenize    rqkmeans and a trained rqvae coding an n x d item_data.h5 read lazily from
              disk (--tokenize, e.g. 10000000x768: 31 GB written to the current folder):
              seconds and peak resident memory of each process.
  speech      a sharded speech cache with --keys index keys (up to 10M): opening it
              (UtteranceLoader + the first batch of 32) beside a plain json.load of its
              hdf5_index.json, from the seed's JSON alone and from rqf's arrays; then a writer's
              commit at that size beside one at 10k keys, and its close.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import measure, print_table, rss_mb  # noqa: E402

K = 256


def collision_data(n: int, seed: int = 0):
    """Codes of n items, 3 levels x 256, about half on a shared tuple; last-level distances."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, K, (n, 3))
    prefixes = max(1, n // 16)  # about 16 items per prefix, as a 1M catalogue over 256 x 256
    pick = rng.integers(0, prefixes, n)
    codes[:, 0], codes[:, 1] = pick % K, (pick // K) % K
    codes[:, 2] = rng.integers(0, 24, n) * 10  # a few favoured last codes: about half collide
    distances = 0.5 + rng.random((n, K), dtype=np.float32) * 4  # the own code is the nearest
    distances[np.arange(n), codes[:, 2]] = rng.random(n, dtype=np.float32) * 0.5
    return codes, distances


def _collisions_case(n: int, mode: str, threads: int, queue) -> None:
    import torch

    torch.set_num_threads(threads)
    from rqf.codes import handle_collisions, unique_codes

    codes, distances = collision_data(n)
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    shared = float((counts[inverse.ravel()] > 1).mean())

    def path():
        handled = handle_collisions(codes, None if mode == "suffix" else distances, mode)
        return unique_codes(handled)

    out, seconds, added = measure(path)
    moved = float((out[:, 2] != codes[:, 2]).mean())
    distance = float(distances[np.arange(n), out[:, 2]].mean())  # to the final last codes
    queue.put((seconds, added, shared, moved, distance))


def plain_sinkhorn(d: np.ndarray, iters: int = 50) -> np.ndarray:
    """The textbook float32 Sinkhorn-Knopp: the whole kernel, two matrix-vector products an
    iteration, then each row's most likely column."""
    import torch

    dist = torch.from_numpy(d)
    t = 0.1 * float(dist.std())
    kern = torch.exp((dist.min(1, keepdim=True).values - dist) / t)
    n, k = kern.shape
    y = torch.ones(k)
    for _ in range(iters):
        x = (1.0 / n) / (kern @ y)
        y = (1.0 / k) / (kern.T @ x)
    return (kern * y).argmax(1).numpy()


def _balanced_case(n: int, which: str, threads: int, queue) -> None:
    import torch

    torch.set_num_threads(threads)
    from rqf.codes.clustering import BalancedScores

    _, distances = collision_data(n)
    fn = plain_sinkhorn if which == "plain" else (lambda d: BalancedScores(d).argmax())
    out, seconds, added = measure(fn, distances)
    sizes = np.bincount(out, minlength=K)
    queue.put((seconds, added, float(sizes.max() / max(sizes.mean(), 1)), 0.0))


def in_process(target, *args):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def collisions_table(sizes, threads) -> None:
    rows = []
    for n in sizes:
        base = None
        for mode in ("suffix", "reassign", "balanced", "optimal"):
            seconds, added, shared, moved, distance = in_process(_collisions_case, n, mode,
                                                                 threads)
            base = base or seconds
            rows.append([f"{n:,}", mode, f"{shared:.0%}", f"{moved:.1%}", round(distance, 4),
                         round(seconds, 3), round(added), f"{seconds / base:.1f}x"])
            print(f"collisions {n} {mode}: {seconds:.2f} s", file=sys.stderr, flush=True)
    print_table(["items", "mode", "shared tuples", "moved", "mean last-level distance",
                 "seconds", "+MB", "vs suffix"], rows,
                f"collision handling + collision level, 3 x {K} codes, {threads} thread(s)")


def balanced_table(sizes, threads) -> None:
    rows = []
    for n in sizes:
        plain = None
        for which in ("plain", "rqf"):
            seconds, added, largest, _ = in_process(_balanced_case, n, which, threads)
            plain = plain or seconds
            rows.append([f"{n:,}", "plain float32 Sinkhorn" if which == "plain" else
                         "rqf BalancedScores", round(seconds, 3), round(added),
                         f"{largest:.2f}", f"{seconds / plain:.2f}x"])
            print(f"balanced {n} {which}: {seconds:.2f} s", file=sys.stderr, flush=True)
    print_table(["items", "code", "seconds", "+MB", "largest / mean code size", "vs plain"],
                rows, f"balanced assignment of n x {K} distances, 50 iterations, "
                f"{threads} thread(s)")


def _reads_case(path: str, which: str, threads: int, queue) -> None:
    """Shuffled 1024-row batches (rqf lazy storage, or a sorted h5py selection), or a split's
    vectors (rqf, or one plain slice read of the same rows)."""
    import h5py
    import torch

    torch.set_num_threads(threads)
    from rqf_h5_recsys import H5RecsysStorage

    rng = np.random.default_rng(0)
    with h5py.File(path, "r") as f:
        n = f["embeddings"].shape[0]
    batches = [rng.choice(n, 1024, replace=False) for _ in range(50)]
    split = np.arange(n // 10, n)  # a 90% training view: one dense run

    storage = H5RecsysStorage(path, in_memory=False)  # opened and checked before timing
    storage.open()
    storage.read_embeddings(np.zeros(1, np.int64))
    handle = h5py.File(path, "r")
    emb = handle["embeddings"]

    def rqf_batches():
        for rows in batches:
            storage.read_embeddings(rows)

    def plain_batches():
        for rows in batches:
            order = np.argsort(rows)
            out = np.empty((len(rows), emb.shape[1]), np.float32)
            out[order] = emb[rows[order]]

    def rqf_split():
        return storage.read_embeddings(split)

    def plain_split():
        return emb[split[0]:split[-1] + 1]

    fn = {"rqf batches": rqf_batches, "plain batches": plain_batches, "rqf split": rqf_split,
          "plain split": plain_split}[which]
    _, seconds, added = measure(fn)
    queue.put((seconds, added, 0.0, 0.0))


def reads_table(sizes, threads, dim: int = 768) -> None:
    import tempfile

    from rqf_h5_recsys import write_item_data

    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "item_data.h5"
            x = np.random.default_rng(0).standard_normal((n, dim), dtype=np.float32)
            write_item_data(path, np.arange(1, n + 1), x)
            del x
            for what in ("batches", "split"):
                plain = None
                for who in ("plain", "rqf"):
                    seconds, added, _, _ = in_process(_reads_case, str(path), f"{who} {what}",
                                                      threads)
                    plain = plain or seconds
                    label = ("50 shuffled batches of 1,024" if what == "batches"
                             else "a 90% split's vectors")
                    rows.append([f"{n:,}", label, "sorted h5py selection" if who == "plain" and
                                 what == "batches" else ("one h5py slice" if who == "plain"
                                                         else "rqf"),
                                 round(seconds, 3), round(added), f"{seconds / plain:.2f}x"])
                    print(f"reads {n} {who} {what}: {seconds:.2f} s", file=sys.stderr, flush=True)
    print_table(["items", "read", "code", "seconds", "+MB", "vs plain"], rows,
                f"reading {dim}-d float32 embeddings from item_data.h5 (lazy, page cache warm), "
                f"{threads} thread(s)")


def _ids_case(n: int, which: str, threads: int, queue) -> None:
    import tempfile

    import h5py
    import torch

    torch.set_num_threads(threads)
    from rqf.codes import code_statistics, write_semantic_ids
    from rqf.codes.statistics import unique_codes

    codes, _ = collision_data(n)
    ids = np.arange(1, n + 1)
    books = np.random.default_rng(1).standard_normal((3, K, 32)).astype(np.float32)
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        path = Path(tmp) / "semantic_ids.h5"
        if which == "plain write":
            unique = unique_codes(codes)  # given, as a plain write of the same arrays is
            lookup = np.lexsort(unique.T[::-1])

            def run():
                with h5py.File(path, "w") as f:
                    for name, arr in (("item_ids", ids), ("codes", codes.astype(np.int32)),
                                      ("unique_codes", unique.astype(np.int32)),
                                      ("lookup_order", lookup),
                                      ("raw_codes", codes.astype(np.int32)), ("codebooks", books)):
                        f.create_dataset(name, data=arr)
        elif which == "rqf write":
            def run():
                write_semantic_ids(path, ids, codes, books, {"levels": 3}, raw_codes=codes)
        elif which == "plain statistics":
            def run():
                key = (codes[:, 0] * K + codes[:, 1]) * K + codes[:, 2]
                np.unique(key, return_counts=True)
                for level in range(3):
                    np.bincount(codes[:, level], minlength=K)
        else:
            def run():
                code_statistics(codes, K)
        run()  # warm: the page cache and numpy's first calls
        _, seconds, added = measure(run)
    queue.put((seconds, added, 0.0, 0.0))


def ids_table(sizes, threads) -> None:
    rows = []
    for n in sizes:
        for pair in (("plain write", "rqf write"), ("plain statistics", "rqf statistics")):
            plain = None
            for which in pair:
                seconds, added, _, _ = in_process(_ids_case, n, which, threads)
                plain = plain or seconds
                rows.append([f"{n:,}", which, round(seconds, 3), round(added),
                             f"{seconds / plain:.2f}x"])
                print(f"ids {n} {which}: {seconds:.3f} s", file=sys.stderr, flush=True)
    print_table(["items", "code", "seconds", "+MB", "vs plain"], rows,
                f"semantic_ids.h5 and code statistics, 3 x {K} codes, {threads} thread(s)")


def plain_lloyd(x, k: int, iters: int, generator):
    import torch

    c = x[torch.randperm(len(x), generator=generator)[:k]].clone()
    for _ in range(iters):
        assign = torch.cat([torch.cdist(x[i:i + 16384], c).argmin(1)
                            for i in range(0, len(x), 16384)])
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).float()
        c = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], c)
    return c


def _kmeans_case(n: int, which: str, threads: int, queue) -> None:
    import torch

    torch.set_num_threads(threads)
    from rqf.codes import kmeans, nearest

    x = torch.from_numpy(np.random.default_rng(0).standard_normal((n, 32), dtype=np.float32))
    g = torch.Generator().manual_seed(0)
    fn = (lambda: plain_lloyd(x, K, 25, g)) if which == "plain" else (lambda: kmeans(x, K, 25, g))
    c, seconds, added = measure(fn)
    queue.put((seconds, added, float(nearest(x, c)[0].mean()), 0.0))


def kmeans_table(sizes, threads) -> None:
    rows = []
    for n in sizes:
        plain = None
        for which in ("plain", "rqf"):
            seconds, added, inertia, _ = in_process(_kmeans_case, n, which, threads)
            plain = plain or seconds
            rows.append([f"{n:,}", "plain chunked Lloyd, random seeds" if which == "plain"
                         else "rqf.codes.kmeans", round(seconds, 2), round(added),
                         round(inertia, 3), f"{seconds / plain:.2f}x"])
            print(f"kmeans {n} {which}: {seconds:.2f} s", file=sys.stderr, flush=True)
    print_table(["items", "code", "seconds", "+MB", "mean sq. distance", "vs plain"], rows,
                f"k-means of n x 32 into {K} centroids, 25 iterations, {threads} thread(s)")


def _tokenize_case(directory: str, which: str, threads: int, queue) -> None:
    import resource

    import torch

    torch.set_num_threads(threads)
    import rqf

    items = str(Path(directory) / "item_data.h5")
    config = {"output_dir": str(Path(directory) / which), "seed": 0,
              "storage": {"type": "h5_recsys", "items": items},
              "dataset": {"type": "items"}, "splitter": {"type": "index", "test_ratio": 0.01},
              "train": {"device": "cpu", "progress": False, "max_steps": 50, "epochs": None},
              "export": {"plots": False}}
    if which == "rqkmeans":  # fit on a sample read by rows, code every item, write the IDs
        config["model"] = {"type": "rqkmeans"}
        start = time.perf_counter()
        rqf.run(config, force=True, echo=lambda *a: None)
    else:  # an rqvae trained on a smaller file of the same kind encodes the whole one
        config["model"] = {"type": "rqvae"}
        config["storage"]["items"] = str(Path(directory) / "train_items.h5")
        rqf.run(config, force=True, echo=lambda *a: None)
        start = time.perf_counter()
        rqf.encode(config["output_dir"], Path(directory) / "encoded.h5",
                   overrides=[f"storage.items={items}"], device="cpu", force=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((seconds, peak, 0.0, 0.0))


def _write_items(path: Path, n: int, d: int, centers: np.ndarray, rng) -> None:
    """The item_data.h5 layout, written a block at a time (clustered vectors)."""
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("item_ids", data=np.arange(1, n + 1, dtype=np.int64))
        emb = f.create_dataset("embeddings", (n, d), np.float32)
        for a in range(0, n, 100_000):
            b = min(n, a + 100_000)
            emb[a:b] = centers[rng.integers(0, len(centers), b - a)] \
                + 0.5 * rng.standard_normal((b - a, d), dtype=np.float32)
        f.attrs.update({"n_items": n, "embedding_dim": d})


def tokenize_table(shape: str, threads: int) -> None:
    import shutil
    import tempfile

    n, d = (int(v) for v in shape.lower().split("x"))
    rows = []
    tmp = tempfile.mkdtemp(dir=".")
    try:
        rng = np.random.default_rng(0)
        centers = rng.standard_normal((1024, d)).astype(np.float32)
        _write_items(Path(tmp) / "item_data.h5", n, d, centers, rng)
        _write_items(Path(tmp) / "train_items.h5", min(n, 100_000), d, centers, rng)
        size = (Path(tmp) / "item_data.h5").stat().st_size / 2**30
        for which in ("rqkmeans", "rqvae encode"):
            seconds, peak, _, _ = in_process(_tokenize_case, tmp, which, threads)
            rows.append([f"{n:,} x {d}", which, round(seconds, 1), round(peak)])
            print(f"tokenize {shape} {which}: {seconds:.1f} s, {peak:.0f} MB", file=sys.stderr,
                  flush=True)
    finally:
        shutil.rmtree(tmp)
    print_table(["items", "run", "seconds", "peak resident MB"], rows,
                f"semantic IDs of a {size:.1f} GiB item file (read lazily above 1 GiB), "
                f"{threads} thread(s)")


def _speech_keys(n: int) -> list[str]:
    return [f"train-clean-100/{i % 2311}/{i % 97}/{i % 2311}_{i % 97}_{i:08d}" for i in range(n)]


def speech_cache(directory: Path, n: int, with_arrays: bool, per_file: int = 20000) -> None:
    """An index of ``n`` keys over ceil(n / per_file) shards. Only the samples a reader opens
    (the dataset's spread check and the first batch) are written into the shards; the index,
    which is what is measured, is complete."""
    import h5py

    from rqf_h5_speech.cache import CacheIndex, shard_name
    from rqf_h5_speech.inspection import spread
    from rqf_h5_speech.keytable import KeyTable

    directory.mkdir(parents=True)
    keys = _speech_keys(n)
    file_idx = np.arange(n) // per_file + 1
    needed = sorted(set(spread(n, 256).tolist()) | set(range(32)))
    rng = np.random.default_rng(0)
    for shard in range(1, int(file_idx[-1]) + 1):
        with h5py.File(directory / shard_name(shard), "w") as f:
            for i in needed:
                if file_idx[i] == shard:
                    t = int(rng.integers(40, 80))
                    f.create_dataset(f"{keys[i]}/hidden_states",
                                     data=rng.standard_normal((t, 1024)).astype(np.float16))
                    f.create_dataset(f"{keys[i]}/mel_spectrogram",
                                     data=rng.standard_normal((1, t, 80)).astype(np.float16))
    index = CacheIndex(directory, KeyTable.from_keys(keys, file_idx), per_file, True,
                       int(file_idx[-1]), int((file_idx == file_idx[-1]).sum()))
    if with_arrays:
        index.save()
    else:
        with open(index.path, "w") as fh:
            index._write_json(fh)


def _speech_case(directory: str, which: str, threads: int, queue) -> None:
    import json
    import pickle

    import torch

    torch.set_num_threads(threads)
    from rqf_h5_speech import ShardedCacheWriter, UtteranceLoader

    anon = rss_mb("RssAnon")
    held = []
    if which == "json.load":
        def run():
            with open(Path(directory) / "hdf5_index.json") as fh:
                held.append(json.load(fh))
        _, seconds, peak = measure(run)
        queue.put((seconds, peak, rss_mb("RssAnon") - anon, 0.0))
    elif which == "open":
        def run():
            loader = UtteranceLoader(directory, batch_size=32)
            held.append((loader, next(iter(loader))))
        _, seconds, peak = measure(run)
        sent = len(pickle.dumps(held[0][0].dataset)) / 2**20  # what a spawned worker receives
        queue.put((seconds, peak, rss_mb("RssAnon") - anon, sent))
    else:  # commit: 5 commits of 20 samples each into a cache of this size, then close
        rng = np.random.default_rng(1)
        writer = ShardedCacheWriter(directory, num_workers=0, commit_every=10**9,
                                    commit_seconds=None)
        x = {"hidden_states": rng.standard_normal((60, 1024)).astype(np.float16)}
        commits = []
        for c in range(5):
            for i in range(20):
                writer.write(f"new/{c}/{i}", x)
            start = time.perf_counter()
            writer.commit()
            commits.append(time.perf_counter() - start)
        start = time.perf_counter()
        writer.close()
        queue.put((float(np.median(commits)), 0.0, time.perf_counter() - start, 0.0))


def speech_table(key_counts, threads) -> None:
    import shutil
    import tempfile

    rows, commit_rows, base_commit = [], [], None
    for n in key_counts:
        with tempfile.TemporaryDirectory(dir=".") as tmp:
            seed, arrays = Path(tmp) / "seed", Path(tmp) / "rqf"
            speech_cache(seed, n, with_arrays=False)
            speech_cache(arrays, n, with_arrays=True)
            plain = None
            for label, directory, which in (
                    ("plain json.load of hdf5_index.json", seed, "json.load"),
                    ("rqf open + first batch, seed JSON only", seed, "open"),
                    ("rqf open + first batch, rqf arrays", arrays, "open")):
                seconds, peak, private, sent = in_process(_speech_case, str(directory), which,
                                                          threads)
                plain = plain or seconds
                rows.append([f"{n:,}", label, round(seconds, 3), round(peak), round(private),
                             "" if which == "json.load" else round(sent, 2),
                             f"{seconds / plain:.2f}x"])
                print(f"speech {n} {label}: {seconds:.2f} s", file=sys.stderr, flush=True)
            commit, _, close, _ = in_process(_speech_case, str(arrays), "commit", threads)
            base_commit = base_commit or commit
            commit_rows.append([f"{n:,}", round(commit * 1000, 1),
                                f"{commit / base_commit:.2f}x", round(close, 2)])
            print(f"speech {n} commit: {commit * 1000:.1f} ms, close {close:.1f} s",
                  file=sys.stderr, flush=True)
            shutil.rmtree(tmp)
    print_table(["keys", "code", "seconds", "+MB peak", "+MB private", "MB to a spawned worker",
                 "vs json.load"], rows,
                f"opening a sharded speech cache, {threads} thread(s); private = anonymous "
                "memory still held after (rqf's arrays are a shared file mapping)")
    print_table(["keys", "ms per commit (20 samples)", f"vs {key_counts[0]:,} keys",
                 "close, s (writes both index files)"], commit_rows,
                "a writer's commit against the size of the cache it adds to")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", help="comma-separated tables: collisions, balanced, reads, ids, "
                   "kmeans, tokenize, speech")
    p.add_argument("--tokenize", default="1000000x768", help="n x d of the tokenize table")
    p.add_argument("--keys", default="10000,100000,1000000,10000000",
                   help="index keys of the speech caches (the first is the commit reference)")
    p.add_argument("--read-sizes", default="10000,100000,400000",
                   help="items of the n x 768 float32 files the reads table writes "
                   "(400,000: 1.2 GB)")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    tables = {"collisions": collisions_table, "balanced": balanced_table,
              "reads": lambda _sizes, threads: reads_table(
                  [int(s) for s in args.read_sizes.split(",")], threads),
              "ids": ids_table, "kmeans": kmeans_table,
              "tokenize": lambda _sizes, threads: tokenize_table(args.tokenize, threads),
              "speech": lambda _sizes, threads: speech_table(
                  [int(s) for s in args.keys.split(",")], threads)}
    for name in (args.only.split(",") if args.only else tables):
        tables[name](sizes, args.threads)


if __name__ == "__main__":
    main()
