"""Recall against seconds: genret, tiger and sasrec, each with its defaults, on the same data.

For each dataset the default rqkmeans IDs are made once (or read from --ids-dir/NAME.h5), then
every model trains with its own defaults (``--set`` adds overrides to all of them, e.g.
``train.max_steps=600`` for a quick look) and validates on its monitored users at each
validation. Printed: one curve table per dataset (validation Recall/NDCG@10 at the seconds each
model had trained when it validated; the seconds include validation), then the test figures
of the weights each run kept, with standard errors, its wall seconds and catalogue coverage,
and the floors. Runs go under --out (kept, so `rqf report` can read them).

    python benchmarks/retrieval_curves.py --datasets scientific           # ~20 minutes
    python benchmarks/retrieval_curves.py --datasets beauty --models genret,sasrec
    python benchmarks/retrieval_curves.py --datasets ml100k --set train.max_steps=300  # a look

Run it on an idle machine, or pin torch's threads with RQF_THREADS=N (as ``rqf --threads``):
the seconds are the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import print_table  # noqa: E402

import rqf  # noqa: E402
from rqf.ranking import per_user_metrics, read_recommendations  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def pipeline(data: Path, out: Path, model: dict) -> dict:
    return {"name": out.name, "output_dir": str(out), "seed": 0,
            "storage": {"type": "h5_recsys", "items": str(data / "item_data.h5"),
                        "sequences": str(data / "sequence.h5")},
            "dataset": {"type": "sequences"}, "splitter": {"type": "leave_last_out"},
            "model": model, "train": {"progress": False}}


def test_errors(run_dir: Path, data: Path) -> dict[str, float]:
    """Standard errors of test R@10 and N@10, from the users' hits in recommendations.h5."""
    import h5py

    users, items, _ = read_recommendations(run_dir / "recommendations.h5")
    with h5py.File(data / "sequence.h5") as f:
        last = {u.decode() if isinstance(u, bytes) else str(u): s[-1]
                for u, s in zip(f["user_ids"][()], f["sequences"][()])}
    per = per_user_metrics(items, np.array([last[u] for u in users]))
    n = len(users)
    return {k: float(per[k].std(ddof=1) / np.sqrt(n)) for k in ("recall@10", "ndcg@10")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(SHARED))
    p.add_argument("--datasets", default="scientific,beauty,ml100k")
    p.add_argument("--models", default="genret,tiger,sasrec")
    p.add_argument("--ids-dir", default=None, help="NAME.h5 semantic IDs per dataset to use")
    p.add_argument("--set", action="append", default=[], dest="overrides",
                   help="KEY=VALUE for every model run (e.g. train.max_steps=600)")
    p.add_argument("--out", default="runs/retrieval_curves")
    args = p.parse_args()
    from rqf.threads import ENV, apply_threads, parse_threads

    print(f"torch threads: {apply_threads(parse_threads(os.environ.get(ENV), ENV))}")
    out = Path(args.out)
    for name in args.datasets.split(","):
        data = Path(args.data) / name
        if not (data / "sequence.h5").is_file():
            print(f"{data}: no sequence.h5; skipped")
            continue
        ids = Path(args.ids_dir) / f"{name}.h5" if args.ids_dir else None
        if ids is None:
            made = rqf.run(pipeline(data, out / f"{name}_rqkmeans", {"type": "rqkmeans"}),
                           echo=lambda _m: None, force=True)
            ids = Path(made.artifacts["semantic_ids"])
        curves, finals = [], []
        for model in args.models.split(","):
            spec = {"type": model}
            if model in ("genret", "tiger"):
                spec["semantic_ids"] = str(ids)
            start = time.perf_counter()
            result = rqf.run(pipeline(data, out / f"{name}_{model}", spec), args.overrides,
                             echo=lambda _m: None, force=True)
            wall = time.perf_counter() - start
            for h in result.metrics["fit"].get("history", []):
                curves.append([model, h["step"], h["seconds"], h.get("valid_recall@10"),
                               h.get("valid_ndcg@10")])
            test = result.metrics["test"]
            se = test_errors(result.run_dir, data)
            finals.append([model, f"{test['recall@10']:.4f} ± {se['recall@10']:.4f}",
                           f"{test['ndcg@10']:.4f} ± {se['ndcg@10']:.4f}",
                           test.get("coverage@10"), result.metrics["fit"].get("steps"),
                           round(wall)])
            for floor, m in (test.get("floors") or {}).items():
                if not any(row[0] == floor for row in finals):
                    finals.append([floor, f"{m['recall@10']:.4f}", f"{m['ndcg@10']:.4f}",
                                   m.get("coverage@10"), "-", "-"])
            (out / f"{name}_{model}" / "curve.json").write_text(json.dumps(
                result.metrics["fit"].get("history", [])))
        print(f"\n## {name}: validation at each validation (seconds trained)\n")
        print_table(["model", "step", "seconds", "valid R@10", "valid N@10"], curves)
        print(f"\n## {name}: test, the kept weights (± standard error)\n")
        print_table(["model", "R@10", "N@10", "coverage@10", "steps", "wall s"], finals)


if __name__ == "__main__":
    main()
