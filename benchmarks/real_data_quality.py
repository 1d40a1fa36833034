"""Semantic-ID quality of the recommended pipeline on the real benchmark files.

Runs rqvae with its default model settings on ../shared/data/ml100k and ../shared/data/beauty
(when present), learning from the items in the leave-last-out training prefixes and exporting
IDs for every item, and prints per-level code usage, collisions, reconstruction error and wall
time. With --items-only the quantizer learns from every item instead.

    python benchmarks/real_data_quality.py
    python benchmarks/real_data_quality.py --steps 5000 --batch-size 640
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import print_table  # noqa: E402

import rqf  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(SHARED))
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--items-only", action="store_true")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    rows = []
    for name in ("ml100k", "beauty", "scientific"):
        folder = Path(args.data) / name
        if not (folder / "item_data.h5").exists():
            print(f"{folder}: not present, skipped")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            config = {
                "name": name, "output_dir": tmp + "/run",
                "storage": {"type": "h5_recsys", "items": str(folder / "item_data.h5"),
                            "sequences": str(folder / "sequence.h5")},
                "dataset": {"type": "items" if args.items_only else "sequences"},
                "splitter": ({"type": "index", "test_ratio": 0.1, "shuffle": True}
                             if args.items_only else {"type": "leave_last_out"}),
                "model": {"type": "rqvae"},
                "train": {"epochs": 1_000_000, "max_steps": args.steps,
                          "batch_size": args.batch_size, "device": args.device,
                          "progress": False, "checkpoint_every": 0},
            }
            start = time.perf_counter()
            result = rqf.run(config, echo=lambda _m: None)
            wall = time.perf_counter() - start
        m = result.metrics["all"]
        rows.append([name, m["n"], result.metrics["fit"]["training_vectors"],
                     result.metrics["fit"]["steps"],
                     " / ".join(f"{u:.1%}" for u in m["utilization_of_reachable"]),
                     " / ".join(f"{q:.0f}" for q in m["perplexity"]),
                     f"{m['collision_rate']:.2%}", m["max_items_per_code"], m["recon_mse"],
                     m["recon_rel_error"], result.metrics["test"]["recon_rel_error"]
                     if "test" in result.metrics else float("nan"), wall])
    print_table(["data", "items", "train vectors", "steps", "code usage per level (of reachable)",
                 "perplexity", "collisions", "max/code", "recon mse", "rel err (all)",
                 "rel err (test)", "wall s"], rows,
                "rqvae defaults (3 x 256, latent 32, hidden 512/256/128); IDs for every item")


if __name__ == "__main__":
    main()
