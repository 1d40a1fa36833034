"""Items/s and sequences/s through a DataLoader over h5_recsys data, with peak memory.

Measures the real files in ../shared/data when present and a generated large file
(1M items, 1M users by default), with 0 and 4 workers, embeddings read lazily (in slices)
or held in memory. Each measurement runs in its own process so its peak memory is its own:
lazy reading keeps memory flat as the file grows.

    python benchmarks/recsys_loader.py
    python benchmarks/recsys_loader.py --items 1000000 --users 1000000 --dim 128
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import print_table  # noqa: E402

HERE = Path(__file__).resolve()
SHARED = HERE.parents[2] / "shared" / "data"


def generate(folder: Path, n_items: int, n_users: int, dim: int) -> Path:
    from rqf_h5_recsys.writer import write_item_data, write_sequence_data

    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "sequence.h5").exists():
        return folder
    rng = np.random.default_rng(0)
    ids = np.arange(1, n_items + 1)
    emb = np.empty((n_items, dim), np.float32)
    for s in range(0, n_items, 200_000):
        block = rng.standard_normal((min(200_000, n_items - s), dim), dtype=np.float32)
        emb[s:s + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    write_item_data(folder / "item_data.h5", ids, emb)
    del emb
    lengths = np.clip(rng.geometric(1 / 20, n_users), 3, 400)
    flat = rng.zipf(1.2, int(lengths.sum())) % n_items + 1
    seqs = np.split(flat, np.cumsum(lengths)[:-1])
    write_sequence_data(folder / "sequence.h5", [f"u{i}" for i in range(n_users)], seqs,
                        total_items=n_items)
    return folder


def peak_rss_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def measure(folder: str, dataset: str, workers: int, in_memory: bool, batch: int,
            limit: int) -> dict:
    import resource

    import torch
    from torch.utils.data import DataLoader

    from rqf_h5_recsys.datasets import ItemsDataset, SequencesDataset
    from rqf_h5_recsys.loader import collate
    from rqf_h5_recsys.storage import H5RecsysStorage

    t0 = time.perf_counter()
    storage = H5RecsysStorage(f"{folder}/item_data.h5",
                              f"{folder}/sequence.h5" if dataset == "sequences" else None,
                              in_memory=in_memory).open()
    open_s = time.perf_counter() - t0
    data = ItemsDataset(storage) if dataset == "items" else SequencesDataset(storage, max_seq_len=50)
    order = np.random.default_rng(0).permutation(len(data))[:limit]
    view = torch.utils.data.Subset(data, order.tolist())
    kwargs = {"collate_fn": collate} if dataset == "sequences" else {}
    loader = DataLoader(view, batch_size=batch, num_workers=workers, **kwargs)
    t0 = time.perf_counter()
    n = 0
    for b in loader:
        n += len(b["user_ids"]) if dataset == "sequences" else len(b["item_id"])
    seconds = time.perf_counter() - t0
    kb = peak_rss_kb()  # VmHWM: reset at exec, unlike ru_maxrss
    kb_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"samples": n, "per_s": n / seconds, "open_s": open_s,
            "peak_mb": kb / 1024, "worker_peak_mb": kb_children / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--limit", type=int, default=50_000, help="samples read per measurement")
    p.add_argument("--workdir", default="/tmp/rqf-bench-recsys")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(**json.loads(args.one))))
        return
    sources = {name: str(SHARED / name) for name in ("ml100k", "beauty")
               if (SHARED / name / "item_data.h5").exists()}
    t0 = time.perf_counter()
    big = generate(Path(args.workdir) / f"gen_{args.items}_{args.users}_{args.dim}",
                   args.items, args.users, args.dim)
    print(f"generated file ready in {time.perf_counter() - t0:.0f} s: {big}")
    sources[f"generated {args.items // 1000}k items/{args.users // 1000}k users, {args.dim}-d"] = str(big)
    rows = []
    for name, folder in sources.items():
        for dataset, batch in (("items", 1024), ("sequences", 256)):
            for in_memory in (False, True):
                for workers in (0, 4):
                    spec = dict(folder=folder, dataset=dataset, workers=workers,
                                in_memory=in_memory, batch=batch, limit=args.limit)
                    out = subprocess.run([sys.executable, str(HERE), "--one", json.dumps(spec)],
                                         capture_output=True, text=True, check=True)
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    rows.append([name, dataset, "memory" if in_memory else "lazy", workers,
                                 r["samples"], r["per_s"], r["open_s"], r["peak_mb"],
                                 r["worker_peak_mb"]])
    print_table(["data", "dataset", "embeddings", "workers", "samples", "samples/s", "open s",
                 "peak MB (main)", "peak MB (a worker)"], rows,
                "h5_recsys through a DataLoader (items batch 1024, sequences batch 256, max_seq_len 50)")


if __name__ == "__main__":
    main()
