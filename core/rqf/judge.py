"""``rqf ids judge``: sets of semantic IDs judged by the retrieval they enable, in one table.

Every IDs file trains the same generative retriever (``genret`` unless ``--model`` names another
ranker that reads ``semantic_ids``, e.g. ``tiger``) on the same data and split (leave-last-out over the data's
sequences, full ranking), one run after another under one folder; the floors (``mostpop``,
``last-item NN``) run once. Each figure is read from the run's ``recommendations.h5`` against
each test user's held-out item, so the table carries per-user standard errors and a paired
test of every set against the first (a paired t-test over the same users' hits). Beside them:
the IDs' raw (nearest-code) collision rate, the share of items collision handling moved, and
each run's wall seconds, and the validation R@10 and N@10 (what to choose between tokenizers
on; the test columns are what to report). A finished run is kept when the judge is started
again.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from rqf.errors import ConfigError, DataError
from rqf.io import write_text_atomic

KS = (5, 10)
FLOORS = ("mostpop", "lastitem_nn")


def id_statistics(path: Path) -> dict[str, float]:
    """Raw collision rate (items whose nearest-code tuple another item shares) and the share of
    items collision handling moved off their nearest codes."""
    from rqf.codes import SemanticIds
    from rqf.codes.statistics import group_codes

    ids = SemanticIds(path)
    raw = ids.raw_codes if ids.raw_codes is not None else ids.codes
    group, sizes = group_codes(np.asarray(raw))
    moved = float((ids.codes != raw).any(1).mean()) if ids.raw_codes is not None else math.nan
    return {"items": int(len(ids.item_ids)), "raw_collisions": float((sizes[group] > 1).mean()),
            "moved": moved}


def per_user(run_dir: Path, targets: dict[str, int]) -> dict[str, np.ndarray]:
    """Each test user's hit@K and NDCG@K contribution, from the run's recommendations.h5."""
    from rqf.ranking import read_recommendations
    from rqf.ranking.metrics import per_user_metrics

    users, items, _ = read_recommendations(run_dir / "recommendations.h5")
    target = np.array([targets[str(u)] for u in users])
    return {"users": users, **per_user_metrics(items, target, KS)}


def test_targets(data: Path) -> dict[str, int]:
    """Each user's held-out test item under leave-last-out: the last of their sequence."""
    import h5py

    path = data / "sequence.h5"
    if not path.is_file():
        raise DataError(f"--data {data}: no sequence.h5 (the judge ranks next items)")
    with h5py.File(path, "r") as f:
        return {(u.decode() if isinstance(u, bytes) else str(u)): int(s[-1])
                for u, s in zip(f["user_ids"][()], f["sequences"][()]) if len(s)}


def _mean_se(values: np.ndarray) -> tuple[float, float]:
    n = len(values)
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0


def _paired_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of a paired t-test of the same users' values (1.0 when identical)."""
    diff = b - a
    if not diff.any():
        return 1.0
    from scipy import stats

    return float(stats.ttest_rel(b, a).pvalue)


def judge(ids_files: Sequence[Path], data: Path, out: Path, steps: int = 1000,
          model: str = "genret", overrides: Sequence[str] = (), seed: int = 0,
          echo: Callable[[str], None] = print) -> Path:
    """Run the judge (see the module docstring); returns ``OUT/judge.md``."""
    import rqf

    data, out = Path(data), Path(out)
    ids_files = [Path(p) for p in ids_files]
    if not ids_files:
        raise ConfigError("rqf ids judge: give at least one semantic_ids.h5")
    names = [p.parent.name if p.name == "semantic_ids.h5" else p.stem for p in ids_files]
    if len(set(names)) != len(names):
        names = [f"{i + 1}_{n}" for i, n in enumerate(names)]
    stats = [id_statistics(p) for p in ids_files]
    for p, s in zip(ids_files, stats):
        if s["items"] == 0:
            raise DataError(f"{p}: holds no items")
    if not (data / "item_data.h5").is_file():
        raise DataError(f"--data {data}: no item_data.h5")
    targets = test_targets(data)

    def config(name: str, model_section: dict[str, Any]) -> dict[str, Any]:
        return {"name": f"judge-{name}", "output_dir": str(out / name), "seed": seed,
                "storage": {"type": "h5_recsys", "items": str(data / "item_data.h5"),
                            "sequences": str(data / "sequence.h5")},
                "dataset": {"type": "sequences"}, "splitter": {"type": "leave_last_out"},
                "model": model_section, "train": {"max_steps": steps, "progress": False}}

    plan = [(n, config(n, {"type": model, "semantic_ids": str(p.resolve())}))
            for n, p in zip(names, ids_files)]
    plan += [(f, config(f, {"type": f})) for f in FLOORS]
    from rqf.pipeline import resolve_config

    for name, cfg in plan:  # every run checked before the first one starts
        try:
            resolve_config(cfg, overrides if name not in FLOORS else ())
        except ConfigError as exc:
            raise ConfigError(f"rqf ids judge: {name}: {str(exc).splitlines()[0]}") from None
    rows: dict[str, dict[str, Any]] = {}
    for name, cfg in plan:
        run_dir = out / name
        if (run_dir / "metrics.json").is_file() and (run_dir / "recommendations.h5").is_file():
            echo(f"judge: {name}: kept the finished run")
        else:
            echo(f"judge: {name}: training ({model if name not in FLOORS else name})")
            started = time.perf_counter()
            rqf.run(cfg, overrides if name not in FLOORS else (), force=run_dir.exists(),
                    echo=lambda _m: None)
            echo(f"judge: {name}: {time.perf_counter() - started:.0f} s")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        rows[name] = {**per_user(run_dir, targets), "wall": metrics.get("wall_seconds"),
                      "valid": metrics.get("valid") or {}}
    report = _table(names, stats, rows, steps, model, data)
    path = out / "judge.md"
    write_text_atomic(path, report)
    return path


def _table(names: list[str], stats: list[dict[str, float]], rows: dict[str, dict[str, Any]],
           steps: int, model: str, data: Path) -> str:
    first = rows[names[0]]
    cols = [f"{m}@{k}" for m in ("recall", "ndcg") for k in KS]
    lines = [f"# Semantic IDs judged on {data.name}", "",
             f"{model}, {steps} steps each, leave-last-out, full ranking over the catalogue, "
             f"{len(first['users'])} test users; mean ± standard error over users; p: paired "
             f"t-test of the same users against `{names[0]}`.", "",
             "| IDs | " + " | ".join(cols) + " | p (recall@10) | p (ndcg@10) | raw collisions "
             "| moved | wall s | valid R@10 | valid N@10 |", "|" + "---|" * (len(cols) + 8)]
    for name, st in zip(names, stats):
        r = rows[name]
        cells = [f"{m:.4f} ± {se:.4f}" for m, se in (_mean_se(r[c]) for c in cols)]
        same = list(r["users"]) == list(first["users"])
        p = [_paired_p(first[c], r[c]) if same and name != names[0] else math.nan
             for c in ("recall@10", "ndcg@10")]
        lines.append(f"| {name} | " + " | ".join(cells) + " | "
                     + " | ".join("-" if math.isnan(v) else f"{v:.3g}" for v in p)
                     + f" | {st['raw_collisions']:.2%} | "
                     + ("-" if math.isnan(st["moved"]) else f"{st['moved']:.1%}")
                     + f" | {r['wall']:.0f} | {_valid(r)} |")
    for floor in FLOORS:
        r = rows[floor]
        cells = [f"{m:.4f} ± {se:.4f}" for m, se in (_mean_se(r[c]) for c in cols)]
        lines.append(f"| floor: {floor} | " + " | ".join(cells) + " | - | - | - | - | "
                     f"{r['wall']:.0f} | {_valid(r)} |")
    return "\n".join(lines) + "\n"


def _valid(row: dict[str, Any]) -> str:
    """The run's validation R@10 and N@10 cells (its metrics.json, every validation user)."""
    valid = row["valid"]
    return " | ".join(f"{valid[k]:.4f}" if k in valid else "-"
                      for k in ("recall@10", "ndcg@10"))
