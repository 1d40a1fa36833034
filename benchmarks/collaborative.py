"""What the collaborative view costs at catalogue scale (``rqf.codes.collaborative``).

A synthetic catalogue of n items and 10 n interactions (users of 2 to 30 items, item
popularity Zipf-like, each user's items drawn mostly from one of n/50 taste groups) goes through
the view's steps, each timed with the peak memory it added: the windowed co-occurrence counts,
the positive PMI and its truncated SVD (64 directions), and the ridge map from 384-d text
vectors. One process a size, torch and BLAS pinned to ``--threads``.

    python benchmarks/collaborative.py                     # 10k / 100k / 1M items
    python benchmarks/collaborative.py --sizes 10000,100000
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import measure, print_table  # noqa: E402


def sequences(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(item rows in record order, record bounds): about 10 n interactions."""
    rng = np.random.default_rng(seed)
    groups = max(n // 50, 1)
    group_of = rng.integers(0, groups, n)
    order = np.argsort(group_of, kind="stable")
    starts = np.searchsorted(group_of[order], np.arange(groups + 1))
    users = n * 10 // 16
    lengths = rng.integers(2, 31, users)
    taste = rng.integers(0, groups, users)
    total = int(lengths.sum())
    own = np.repeat(taste, lengths)
    size = starts[own + 1] - starts[own]
    pick = order[starts[own] + (rng.random(total) * np.maximum(size, 1)).astype(np.int64)]
    popular = np.minimum((rng.pareto(1.2, total) * n / 100).astype(np.int64), n - 1)
    rows = np.where(rng.random(total) < 0.8, pick, popular)
    bounds = np.zeros(users + 1, np.int64)
    np.cumsum(lengths, out=bounds[1:])
    return rows, bounds


def _case(n: int, threads: int, queue) -> None:
    os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
    from rqf.codes.collaborative import DIM, RIDGE, RIDGE_ITEMS, cooccurrence, ppmi_vectors

    rows, bounds = sequences(n)
    counts, c_s, c_mb = measure(cooccurrence, rows, bounds, n)
    (vectors, has), p_s, p_mb = measure(ppmi_vectors, counts, DIM)
    rng = np.random.default_rng(1)
    fit = np.flatnonzero(has)[:RIDGE_ITEMS]
    text = rng.standard_normal((len(fit), 384)).astype(np.float32)

    def ridge():
        gram = text.T.astype(np.float64) @ text + RIDGE * np.eye(384)
        return np.linalg.solve(gram, text.T.astype(np.float64) @ vectors[fit])

    _, r_s, r_mb = measure(ridge)
    kept_mb = vectors[has].nbytes / 2 ** 20
    queue.put((len(rows), counts.nnz, float(has.mean()), c_s, c_mb, p_s, p_mb, r_s, r_mb,
               kept_mb))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        proc = ctx.Process(target=_case, args=(n, args.threads, queue))
        proc.start()
        inter, nnz, share, c_s, c_mb, p_s, p_mb, r_s, r_mb, kept = queue.get()
        proc.join()
        rows.append([f"{n:,}", f"{inter:,}", f"{nnz:,}", f"{share:.1%}", round(c_s, 2),
                     round(c_mb), round(p_s, 2), round(p_mb), round(r_s, 2), round(r_mb),
                     round(kept), round(c_s + p_s + r_s, 2)])
        print(f"collaborative {n}: {c_s + p_s + r_s:.1f} s", file=sys.stderr, flush=True)
    print_table(["items", "interactions", "pairs counted", "items with a vector",
                 "counts s", "+MB", "PPMI + SVD s", "+MB", "ridge s", "+MB",
                 "kept in model.pt MB", "total s"], rows,
                f"the collaborative view's steps, {args.threads} thread(s)")


if __name__ == "__main__":
    main()
