"""Costs at catalogue scale, each beside the plain code a user would write, with the ratio.

Every case runs in its own process with torch pinned to one thread (``--threads``), so the
ratios compare like with like; ``+MB`` is the peak resident memory the step added.

    python benchmarks/scale.py                         # 10k / 100k / 1M items
    python benchmarks/scale.py --sizes 10000,100000    # a quick look
    python benchmarks/scale.py --only collisions

Tables:
  collisions  semantic-ID collision handling, 3 levels x 256 codes with about half the items
              on a shared nearest tuple: the nearest tuples plus the collision level (suffix,
              the plain reference), then reassign and balanced.
  balanced    balanced assignment (Sinkhorn-Knopp, 50 iterations) of n x 256 distances beside
              a plain float32 Sinkhorn-Knopp that keeps the whole kernel in memory.
  reads       shuffled 1,024-row batches from a lazy item_data.h5 beside a sorted h5py
              selection of the same rows, and a split's vectors beside one slice read
              (--read-sizes, up to 400,000 x 768 = 1.2 GB).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import print_table  # noqa: E402

K = 256


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return float("nan")


def _measure(fn, *args):
    """Seconds and the peak memory ``fn(*args)`` added above what was resident before."""
    try:  # reset the high-water mark (Linux); without it the peak is since the start
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    before = _rss_mb("VmRSS")
    start = time.perf_counter()
    out = fn(*args)
    seconds = time.perf_counter() - start
    return out, seconds, max(_rss_mb("VmHWM") - before, 0.0)


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

    out, seconds, added = _measure(path)
    moved = float((out[:, 2] != codes[:, 2]).mean())
    queue.put((seconds, added, shared, moved))


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
    out, seconds, added = _measure(fn, distances)
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
        for mode in ("suffix", "reassign", "balanced"):
            seconds, added, shared, moved = in_process(_collisions_case, n, mode, threads)
            base = base or seconds
            rows.append([f"{n:,}", mode, f"{shared:.0%}", f"{moved:.1%}", round(seconds, 3),
                         round(added), f"{seconds / base:.1f}x"])
            print(f"collisions {n} {mode}: {seconds:.2f} s", file=sys.stderr, flush=True)
    print_table(["items", "mode", "shared tuples", "moved", "seconds", "+MB", "vs suffix"], rows,
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
    _, seconds, added = _measure(fn)
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", help="comma-separated tables: collisions, balanced, reads")
    p.add_argument("--read-sizes", default="10000,100000,400000",
                   help="items of the n x 768 float32 files the reads table writes "
                   "(400,000: 1.2 GB)")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    tables = {"collisions": collisions_table, "balanced": balanced_table,
              "reads": lambda _sizes, threads: reads_table(
                  [int(s) for s in args.read_sizes.split(",")], threads)}
    for name in (args.only.split(",") if args.only else tables):
        tables[name](sizes, args.threads)


if __name__ == "__main__":
    main()
