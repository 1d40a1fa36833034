"""Semantic-ID quality of the recommended pipeline, with its defaults, on the real benchmark files.

Runs rqvae with no ``train`` section and default model settings on ../shared/data/{ml100k,
beauty,scientific} (when present), learning from the items in the leave-last-out training
prefixes and exporting IDs for every item. Each trained model is then scored under every
collision handling mode (they differ only after training), and the table shows per-level code
usage, collisions after handling and of the nearest codes, reconstruction error, and the time
of each phase: initialisation, training, and everything after training.

    python benchmarks/real_data_quality.py
    python benchmarks/real_data_quality.py --items-only --data ../shared/data
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
from rqf.codes import COLLISION_MODES  # noqa: E402
from rqf.pipeline import build, resolve_config  # noqa: E402
from rqf_rqvae import RQVAEModel  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(SHARED))
    p.add_argument("--datasets", default="ml100k,beauty,scientific")
    p.add_argument("--items-only", action="store_true", help="learn from every item instead")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    rows, phases = [], []
    for name in args.datasets.split(","):
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
                "train": {"device": args.device, "progress": False},
            }
            start = time.perf_counter()
            result = rqf.run(config, echo=lambda _m: None)
            wall = time.perf_counter() - start
            fit = result.metrics["fit"]
            after = wall - fit["seconds"] - fit["kmeans_init_seconds"]
            phases.append([name, fit["training_vectors"], fit["steps"], fit["kmeans_init_seconds"],
                           fit["seconds"], round(after, 2), f"{after / wall:.1%}", round(wall, 1)])
            model = RQVAEModel.load(Path(tmp) / "run" / "model.pt", device=args.device)
            parts = build(resolve_config(config))
            try:
                for mode in COLLISION_MODES:
                    model.config["collision_handling"] = mode
                    t0 = time.perf_counter()
                    m = model.evaluate(parts.dataset)
                    rows.append([name, mode, m["n"],
                                 " / ".join(f"{u:.1%}" for u in m["utilization_of_reachable"]),
                                 f"{m['collision_rate']:.2%}", f"{m['quantizer_collision_rate']:.2%}",
                                 m["max_items_per_code"], round(m["recon_rel_error"], 4),
                                 round(time.perf_counter() - t0, 2)])
            finally:
                parts.storage.close()
    print_table(["data", "training vectors", "steps", "init s", "train s", "after training s",
                 "after / wall", "wall s"], phases,
                "phases of a default run (no train section): k-means init, training loop, "
                "evaluation + export")
    print()
    print_table(["data", "collision handling", "items", "codes used per level",
                 "collisions", "nearest-code collisions", "max/code", "rel recon err",
                 "encode+assign s"], rows,
                "the same trained model under each collision handling mode (all items)")


if __name__ == "__main__":
    main()
