"""``rqf sweep``: a grid of runs of one pipeline, one after another, and one table of them.

Each combination of ``--grid key=v1,v2`` values (times ``--seeds``) runs into its own folder
under the sweep folder, named by what it sets (``model.levels=3,seed=1``). Started again, a
sweep keeps every finished run and goes on with an unfinished one from its checkpoint, so a
killed sweep trains only what is missing. Every combination is validated before the first run.
The sweep folder's ``report.md`` holds what differs between the runs and each metric side by
side: the mean over seeds with its standard deviation.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from rqf.errors import ConfigError, RqfError
from rqf.io import FolderLock, write_text_atomic

LOCK = ".rqf-sweep.lock"
MARKER = "sweep.json"


def parse_grid(items: Sequence[str]) -> list[tuple[str, list[Any]]]:
    """``key.path=v1,v2`` items as (key, values), values typed by YAML rules."""
    grid: list[tuple[str, list[Any]]] = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise ConfigError(f"--grid {item!r}: expected key.path=value,value (e.g. "
                              "model.levels=3,4)")
        if key in {k for k, _ in grid}:
            raise ConfigError(f"--grid {key}: given twice; list every value in one --grid")
        if key in ("output_dir", "seed"):
            raise ConfigError(f"--grid {key}: the sweep sets it (--seeds for seeds)")
        values = [yaml.safe_load(v.strip()) for v in _split(raw)]
        if len(set(map(json.dumps, values))) != len(values):
            raise ConfigError(f"--grid {key}: a value is listed twice ({raw})")
        grid.append((key, values))
    if not grid:
        raise ConfigError("rqf sweep: give at least one --grid key.path=value,value")
    return grid


def _split(raw: str) -> list[str]:
    """Values separated by commas outside brackets: ``[64,32],[128]`` is two values."""
    out, depth, current = [], 0, ""
    for ch in raw:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            out.append(current)
            current = ""
        else:
            current += ch
    return out + [current]


def run_name(settings: Sequence[tuple[str, Any]]) -> str:
    """A folder name from what a run sets: ``model.levels=3,seed=1``."""
    parts = [f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in settings]
    return re.sub(r"[^A-Za-z0-9._=,+\-\[\]]", "_", ",".join(parts))


def plan(pipeline: Path, grid: list[tuple[str, list[Any]]], seeds: int, out: Path,
         overrides: Sequence[str]) -> list[dict[str, Any]]:
    """Every run of the sweep, each resolved (so a bad value is refused before any run)."""
    from rqf.pipeline import resolve_config

    base = resolve_config(pipeline, overrides)
    runs = []
    for values in itertools.product(*(v for _, v in grid)):
        for s in range(seeds):
            settings = list(zip((k for k, _ in grid), values))
            seed = base["seed"] + s
            name = run_name(settings + ([("seed", seed)] if seeds > 1 else []))
            sets = [*overrides, *(f"{k}={json.dumps(v)}" for k, v in settings),
                    f"seed={seed}", f"output_dir={out / name}"]
            try:
                resolve_config(pipeline, sets)
            except ConfigError as exc:
                first = str(exc).splitlines()[0]
                raise ConfigError(f"rqf sweep: {name}: {first}") from None
            runs.append({"name": name, "settings": dict(settings), "seed": seed, "sets": sets})
    return runs


def _finished(run_dir: Path) -> bool:
    return (run_dir / "metrics.json").is_file()


def sweep(pipeline: Path, grid_items: Sequence[str], seeds: int = 1, out: Path | None = None,
          overrides: Sequence[str] = (), echo: Callable[[str], None] = print) -> Path:
    """Run the grid (see the module docstring); returns the sweep's ``report.md``."""
    from rqf.pipeline import resolve_config, run, validate

    if seeds < 1:
        raise ConfigError(f"--seeds: expected a positive number, got {seeds}")
    grid = parse_grid(grid_items)
    if out is None:
        out = Path(str(resolve_config(pipeline, overrides)["output_dir"]) + "_sweep")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RqfError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise RqfError(f"--out {out}: not empty and not a sweep folder (no {MARKER}); "
                       "choose another")
    runs = plan(pipeline, grid, seeds, out, overrides)
    missing = [r for r in runs if not _finished(out / r["name"])]
    storage_keys = [k for k, _ in grid if k.startswith(("storage.", "dataset.", "splitter."))]
    for r in (missing if storage_keys else missing[:1]):  # the data opens, before any change
        validate(pipeline, r["sets"])
    out.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(out, "rqf sweep", LOCK).acquire()
    try:
        write_text_atomic(out / MARKER, json.dumps({
            "pipeline": str(Path(pipeline).resolve()), "grid": dict(grid), "seeds": seeds,
            "overrides": list(overrides), "runs": [r["name"] for r in runs]}, indent=1))
        done = [r for r in runs if _finished(out / r["name"])]
        if done:
            echo(f"sweep: keeping {len(done)} finished run(s) of {len(runs)}")
        for i, r in enumerate(runs, 1):
            if _finished(out / r["name"]):
                continue
            resume = (out / r["name"]).is_dir() and any((out / r["name"]).iterdir())
            echo(f"sweep: run {i}/{len(runs)}: {r['name']}" + (" (resumed)" if resume else ""))
            run(pipeline, r["sets"], resume=resume, echo=echo)
        report = out / "report.md"
        write_text_atomic(report, sweep_report(out, runs, grid, seeds))
    finally:
        lock.release()
    return report


def _mean_sd(values: list[float]) -> tuple[float, float | None]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"


def sweep_report(out: Path, runs: list[dict[str, Any]], grid: list[tuple[str, list[Any]]],
                 seeds: int) -> str:
    """What differs between the combinations, then every metric of each: the mean over its
    seeds, with the standard deviation when there are several."""
    from rqf.report import SPLITS, flatten

    combos: dict[str, dict[str, Any]] = {}
    for r in runs:
        label = run_name(list(r["settings"].items()))
        entry = combos.setdefault(label, {"settings": r["settings"], "metrics": []})
        metrics = json.loads((out / r["name"] / "metrics.json").read_text())
        flat = {f"{s}.{k}": v for s in SPLITS if isinstance(metrics.get(s), dict)
                for k, v in flatten(metrics[s]).items()}
        flat["wall_seconds"] = metrics.get("wall_seconds")
        entry["metrics"].append(flat)
    labels = list(combos)
    keys = [k for k, _ in grid]
    lines = [f"# Sweep: {out.name}", "",
             f"{len(runs)} runs: {len(labels)} combinations"
             + (f" x {seeds} seeds (mean ± standard deviation over seeds)" if seeds > 1 else ""),
             "", "## What differs", "", "| run | " + " | ".join(keys) + " |",
             "|" + "---|" * (len(keys) + 1)]
    for i, label in enumerate(labels, 1):
        values = [json.dumps(combos[label]["settings"][k]) for k in keys]
        lines.append(f"| {i} | " + " | ".join(values) + " |")
    lines += ["", "## Metrics", "", "| metric | " + " | ".join(str(i) for i in
                                                             range(1, len(labels) + 1)) + " |",
              "|" + "---|" * (len(labels) + 1)]
    names = list(dict.fromkeys(k for c in combos.values() for m in c["metrics"] for k in m))
    for name in names:
        cells = []
        for label in labels:
            values = [m.get(name) for m in combos[label]["metrics"]]
            if values and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                              for v in values):
                mean, sd = _mean_sd([float(v) for v in values])
                cells.append(_fmt(mean) + (f" ± {_fmt(sd)}" if sd is not None else ""))
            else:
                cells.append("-")
        if any(c != "-" for c in cells):
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Runs: " + ", ".join(f"`{r['name']}`" for r in runs), ""]
    return "\n".join(lines)
