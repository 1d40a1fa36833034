"""Where a default rqvae run spends its time: initialisation, training, and after training.

Writes a synthetic catalogue (clustered, L2-normalised vectors, default 100,000 x 768) and runs
the ``items`` + ``index`` pipeline with the model's defaults and no ``train`` section. After
training, every item is encoded once and decoded once; every split's metrics and the export
come from that one pass.

    python benchmarks/rqvae_phases.py
    python benchmarks/rqvae_phases.py --items 100000 --dim 768 --device cuda
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import peak_rss_mb, print_table  # noqa: E402

import rqf  # noqa: E402
from rqf_h5_recsys import write_item_data  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--device", default="auto")
    p.add_argument("--max-steps", type=int, default=None, help="override the default budget")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(512, args.dim)).astype(np.float32)
    x = centers[rng.integers(0, 512, args.items)] + 0.5 * rng.normal(size=(args.items, args.dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    with tempfile.TemporaryDirectory() as tmp:
        items = write_item_data(Path(tmp) / "item_data.h5", np.arange(1, args.items + 1), x)
        train = {"device": args.device, "progress": False}
        if args.max_steps:
            train["max_steps"] = args.max_steps
        config = {"name": "phases", "output_dir": tmp + "/run",
                  "storage": {"type": "h5_recsys", "items": str(items)},
                  "dataset": {"type": "items"}, "splitter": {"type": "index", "test_ratio": 0.1},
                  "model": {"type": "rqvae"}, "train": train}
        start = time.perf_counter()
        result = rqf.run(config, echo=lambda _m: None)
        wall = time.perf_counter() - start
    fit = result.metrics["fit"]
    setup = wall - result.metrics["wall_seconds"]  # config, open, split, model build
    after = result.metrics["wall_seconds"] - fit["seconds"] - fit["kmeans_init_seconds"]
    rows = [["set-up (open, split, build)", setup], ["k-means init", fit["kmeans_init_seconds"]],
            ["training loop", fit["seconds"]], ["after training (evaluate + export)", after]]
    print_table(["phase", "seconds", "share of wall"],
                [[name, round(s, 2), f"{s / wall:.1%}"] for name, s in rows],
                f"{args.items} x {args.dim} items, {fit['steps']} steps on {fit['device']}; "
                f"wall {wall:.1f} s, peak RSS {peak_rss_mb():.0f} MB")
    m = result.metrics["all"]
    print(f"codes used per level {[round(u, 3) for u in m['utilization_of_reachable']]}, "
          f"collisions {m['collision_rate']:.2%} (nearest codes {m['quantizer_collision_rate']:.2%})")


if __name__ == "__main__":
    main()
