"""The short human report of a run directory, and side-by-side comparison of two runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from rqf.errors import RqfError
from rqf.io import write_text_atomic

REPORT_NAME = "report.md"
SPLITS = ("train", "valid", "test", "all")


def _load_run(run_dir: Path) -> tuple[str, dict[str, Any]]:
    run_dir = Path(run_dir)
    config_path, metrics_path = run_dir / "config.yaml", run_dir / "metrics.json"
    if not config_path.exists():
        raise RqfError(f"{run_dir}: not an rqf run directory (no config.yaml)")
    if not metrics_path.exists():
        raise RqfError(f"{run_dir}: the run has not finished (no metrics.json)")
    try:
        metrics = json.loads(metrics_path.read_text())
    except json.JSONDecodeError as exc:
        raise RqfError(f"{metrics_path}: not valid JSON ({exc})") from None
    return config_path.read_text(), metrics


def flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested metrics as ``a.b`` keys; lists of numbers stay lists (per-level values)."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            flat[name] = value
        elif isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
            flat[name] = value
    return flat


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return " / ".join(_fmt(v) for v in value)
    return str(value)


def _metric_table(metrics: Mapping[str, Any]) -> list[str]:
    per_split = {s: flatten(metrics[s]) for s in SPLITS if isinstance(metrics.get(s), Mapping)}
    if not per_split:
        return ["(no per-split metrics)"]
    keys = list(dict.fromkeys(k for flat in per_split.values() for k in flat))
    lines = ["| metric | " + " | ".join(per_split) + " |",
             "|---|" + "---|" * len(per_split)]
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(_fmt(per_split[s].get(key, "")) for s in per_split)
                     + " |")
    return lines


def render_report(run_dir: Path) -> str:
    run_dir = Path(run_dir)
    config_text, metrics = _load_run(run_dir)
    split = metrics.get("split", {})
    lines = [f"# Run report: {metrics.get('name', run_dir.name)}", ""]
    health = metrics.get("health")
    if isinstance(health, Mapping):
        warnings = health.get("warnings") or []
        lines += ["## Health", ""]
        lines += [f"- **warning**: {w}" for w in warnings] if warnings else \
            ["Healthy: the model's checks found nothing wrong."]
        lines.append("")
    lines += [f"Run directory: `{run_dir}`  ", f"Wall time: {metrics.get('wall_seconds', '?')} s",
              "", "## Split", ""]
    counts = split.get("counts", {})
    if counts:
        lines += ["| split | samples |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in counts.items()]
    for key, value in split.items():
        if key != "counts":
            lines.append(f"- {key}: `{json.dumps(value)}`")
    lines += ["", "## Metrics", "", *_metric_table(metrics), ""]
    plots = sorted(p.name for p in run_dir.glob("*.png"))
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    artifacts = metrics.get("artifacts", {})
    if artifacts:
        lines += ["## Artifacts", ""] + [f"- {k}: `{v}`" for k, v in artifacts.items()] + [""]
    lines += ["## Config", "", "```yaml", config_text.rstrip(), "```", ""]
    return "\n".join(lines)


def write_report(run_dir: Path) -> Path:
    path = Path(run_dir) / REPORT_NAME
    write_text_atomic(path, render_report(run_dir))
    return path


def compare_runs(a: Path, b: Path) -> str:
    """A Markdown table of every numeric metric of two runs, with the difference."""
    (_, ma), (_, mb) = _load_run(a), _load_run(b)
    fa = {f"{s}.{k}": v for s in SPLITS if isinstance(ma.get(s), Mapping)
          for k, v in flatten(ma[s]).items()}
    fb = {f"{s}.{k}": v for s in SPLITS if isinstance(mb.get(s), Mapping)
          for k, v in flatten(mb[s]).items()}
    lines = [f"# {ma.get('name', Path(a).name)} vs {mb.get('name', Path(b).name)}", "",
             f"| metric | {Path(a).name} | {Path(b).name} | difference |", "|---|---|---|---|"]
    for key in dict.fromkeys([*fa, *fb]):
        va, vb = fa.get(key), fb.get(key)
        diff = ""
        if isinstance(va, (int, float)) and isinstance(vb, (int, float)) \
                and not isinstance(va, bool) and not isinstance(vb, bool):
            diff = _fmt(float(vb) - float(va))
        lines.append(f"| {key} | {_fmt(va) if va is not None else '-'} | "
                     f"{_fmt(vb) if vb is not None else '-'} | {diff} |")
    for key in ("wall_seconds",):
        lines.append(f"| {key} | {ma.get(key, '-')} | {mb.get(key, '-')} | |")
    return "\n".join(lines) + "\n"
