"""Tokenizers judged by the retrieval they enable: one table per dataset.

For each shared dataset (leave-last-out, full ranking over all items, a hit only when the whole
item ID matches): the MostPop and last-item nearest-neighbour floors, then TIGER trained on
semantic IDs from rqvae (one trained model, IDs under each collision handling mode), from
rqkmeans (balanced levels, the default, and plain ones), and from random codes of the same shape (3 x 256 and the collision level).
SASRec (over item ids, no IDs needed) is the reference every ranker is read against, and
``--ids FILE...`` adds TIGER on any other semantic_ids.h5 (e.g. one made by ``rqf import-ids``
from another tool's .index.json). Columns: test Recall/NDCG@5/10, seconds to make the IDs,
seconds to train the ranker, and the ranker's whole run (wall) so rankers are compared at
equal CPU budget.

    python benchmarks/generative_retrieval.py                       # CPU size, ~30 min a dataset
    python benchmarks/generative_retrieval.py --datasets ml100k --steps 300   # a quick look
    python benchmarks/generative_retrieval.py --datasets scientific --rows rqkmeans \
        --sasrec-steps 0 --variant base: --variant users:user_tokens=2000   # one option measured
    python benchmarks/generative_retrieval.py --device cuda --steps 20000 --d-model 128 \\
        --layers 4 --ff 1024 --heads 8                              # nearer the published size

The CPU default trains each TIGER for --steps 600 at d_model 64: enough to rank ID schemes
against each other, not to reach published figures (examples/tiger_paper.yaml is that size).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import print_table  # noqa: E402

import rqf  # noqa: E402
from rqf.codes import COLLISION_MODES, SemanticIds, write_semantic_ids  # noqa: E402
from rqf.pipeline import build, resolve_config  # noqa: E402
from rqf_rqvae import RQVAEModel  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
COLUMNS = ["recall@5", "recall@10", "ndcg@5", "ndcg@10"]


def run(config: dict) -> dict:
    start = time.perf_counter()
    result = rqf.run(config, echo=lambda _m: None)
    return {**result.metrics, "wall": time.perf_counter() - start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(SHARED))
    p.add_argument("--datasets", default="ml100k,scientific,beauty")
    p.add_argument("--steps", type=int, default=600, help="TIGER training steps")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--ff", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--keep", help="keep the runs in this folder (default: a temporary one)")
    p.add_argument("--rows", help="only TIGER on these comma-separated ID sets: 'rqvae "
                   "(suffix)', 'rqvae (reassign)', 'rqvae (balanced)', rqkmeans, 'rqkmeans "
                   "(plain levels)', random, or none (the floors and sasrec always run)")
    p.add_argument("--sasrec-steps", type=int, default=None,
                   help="SASRec training steps (default: the model's); 0 leaves SASRec out")
    p.add_argument("--ids", nargs="*", default=[], metavar="FILE",
                   help="more semantic_ids.h5 files to judge with TIGER (one dataset at a time)")
    p.add_argument("--variant", action="append", type=variant, metavar="LABEL:KEY=V,...",
                   help="a TIGER row per ID set with these model params, e.g. "
                   "'users:user_tokens=2000' or 'beam50:beam=50' (repeat for more; default: "
                   "one row with the params above)")
    p.add_argument("--curves", action="store_true",
                   help="also print each trained ranker's validation recall against seconds")
    args = p.parse_args()
    for name in args.datasets.split(","):
        folder = Path(args.data) / name
        if not (folder / "sequence.h5").exists():
            print(f"{folder}: not present, skipped")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(args.keep) / name if args.keep else Path(tmp)
            table(name, folder, work, args)


def variant(text: str) -> tuple[str, dict]:
    """``LABEL:key=value,key=value`` -> (LABEL, params), values read as YAML scalars."""
    import yaml

    label, _, pairs = text.partition(":")
    try:
        params = {k.strip(): yaml.safe_load(v) for k, v in
                  (pair.split("=", 1) for pair in pairs.split(",") if pair.strip())}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LABEL:KEY=VALUE,..., got {text!r}") from None
    return label.strip(), params


def table(name: str, folder: Path, work: Path, args) -> None:
    data = {"storage": {"type": "h5_recsys", "items": str(folder / "item_data.h5"),
                        "sequences": str(folder / "sequence.h5")},
            "dataset": {"type": "sequences"}, "splitter": {"type": "leave_last_out"}}
    quiet = {"progress": False, "device": args.device}
    rows, curves = [], []

    def ranker(label: str, model: dict, ids_seconds: float | None, train: dict | None = None):
        m = run({**data, "name": label, "output_dir": str(work / label), "model": model,
                 "train": {**quiet, **(train or {})}})
        test = m["test"]
        rows.append([label, *(round(test[c], 4) for c in COLUMNS),
                     "-" if ids_seconds is None else round(ids_seconds, 1),
                     round(m["fit"].get("seconds", m["wall"]), 1), round(m["wall"], 1)])
        print(f"{name}: {label} done ({m['wall']:.0f} s)", file=sys.stderr, flush=True)
        curves.extend([label, h["step"], h.get("seconds", float("nan")),
                       round(h["valid_recall@10"], 4), round(h["valid_ndcg@10"], 4)]
                      for h in m["fit"].get("history", []))

    ranker("mostpop", {"type": "mostpop"}, None)
    ranker("last-item NN", {"type": "lastitem_nn"}, None)
    if args.sasrec_steps != 0:
        ranker("sasrec", {"type": "sasrec", "floors": False}, None,
               {"max_steps": args.sasrec_steps} if args.sasrec_steps else None)

    only = [w.strip() for w in args.rows.split(",")] if args.rows else None
    wanted = (lambda label: not only or label in only)
    ids: dict[str, tuple[Path, float]] = {}
    if any(wanted(f"rqvae ({mode})") for mode in COLLISION_MODES) or wanted("random"):
        m = run({**data, "name": "rqvae", "output_dir": str(work / "rqvae"),
                 "model": {"type": "rqvae"}, "train": quiet})
        model = RQVAEModel.load(work / "rqvae" / "model.pt", device=args.device)
        parts = build(resolve_config({**data, "model": {"type": "rqvae"}}))
        try:
            source = parts.dataset.export_source()
            for mode in COLLISION_MODES:
                model.config["collision_handling"] = mode
                path = model.export_items(source, work / f"ids_rqvae_{mode}.h5")
                ids[f"rqvae ({mode})"] = (path, m["wall"])
        finally:
            parts.storage.close()
        shape = SemanticIds(ids["rqvae (reassign)"][0])
        random_codes = np.random.default_rng(0).integers(0, 256, shape.codes.shape)
        ids["random"] = (write_semantic_ids(work / "ids_random.h5", shape.item_ids, random_codes,
                                            None, {"codebook_size": 256, "tokenizer": "random"}),
                         0.0)
    for label, folder, params in (("rqkmeans", "rqkmeans", {}),
                                  ("rqkmeans (plain levels)", "rqkmeans_plain",
                                   {"balanced": False})):
        if wanted(label):
            m = run({**data, "name": folder, "output_dir": str(work / folder),
                     "model": {"type": "rqkmeans", **params}, "train": quiet})
            ids[label] = (work / folder / "semantic_ids.h5", m["wall"])
    for path in args.ids:
        ids[Path(path).name] = (Path(path).resolve(), 0.0)
    tiger = {"type": "tiger", "floors": False, "d_model": args.d_model, "layers": args.layers,
             "ff": args.ff, "heads": args.heads}
    for label, (path, seconds) in ids.items():
        if not wanted(label) and label not in {Path(p).name for p in args.ids}:
            continue
        for variant, params in (args.variant or [("", {})]):
            ranker(f"tiger on {label}{f' [{variant}]' if variant else ''}",
                   {**tiger, "semantic_ids": str(path), **params}, seconds,
                   {"max_steps": args.steps, "eval_every": max(1, args.steps // 4),
                    "warmup_steps": min(200, args.steps // 5)})
    print_table(["model", "R@5", "R@10", "N@5", "N@10", "IDs s", "train s", "wall s"], rows,
                f"{name}: test split, leave-last-out, full ranking (TIGER: {args.steps} steps, "
                f"d_model {args.d_model}, {args.layers}+{args.layers} layers)")
    if args.curves and curves:
        print_table(["model", "step", "train s", "valid R@10", "valid N@10"], curves,
                    f"{name}: validation recall against training seconds (monitored users)")


if __name__ == "__main__":
    main()
