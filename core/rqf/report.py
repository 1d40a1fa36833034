"""The short human report of a run directory, its training curves, and the side-by-side
comparison of any number of runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from rqf.errors import RqfError
from rqf.io import atomic_path, write_text_atomic

REPORT_NAME = "report.md"
CURVES_NAME = "training_curves.png"
SPLITS = ("train", "valid", "test", "all")
CURVE_ROWS = 10  # rows of the report's loss table: evenly spread over the run


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
    if not isinstance(metrics, dict):
        raise RqfError(f"{metrics_path}: expected a JSON object of metrics")
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


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]


def _metric_table(metrics: Mapping[str, Any]) -> list[str]:
    per_split = {s: flatten(metrics[s]) for s in SPLITS if isinstance(metrics.get(s), Mapping)}
    if not per_split:
        return ["(no per-split metrics)"]
    keys = list(dict.fromkeys(k for flat in per_split.values() for k in flat))
    return _table(["metric", *per_split],
                  [[k, *(per_split[s].get(k, "") for s in per_split)] for k in keys])


def _health_section(health: Any) -> list[str]:
    if not isinstance(health, Mapping):
        return []
    if health.get("checked") is False:
        return ["## Health", "", "Not checked: the model has no health checks.", ""]
    warnings = health.get("warnings") or []
    lines = ["## Health", ""]
    lines += [f"- **warning**: {w}" for w in warnings] if warnings else \
        ["Healthy: the model's checks found nothing wrong."]
    return lines + [""]


def _split_section(metrics: Mapping[str, Any]) -> list[str]:
    """Samples per split in the dataset's unit (users, utterances), and the items each split
    coded when the model reports them."""
    split = metrics.get("split") or {}
    counts = split.get("counts") or {}
    lines = ["## Split", ""]
    if counts:
        coded = {role: (metrics.get(role) or {}).get("n") for role in counts}
        header = ["split", str(split.get("unit", "samples"))]
        if any(isinstance(v, int) for v in coded.values()):
            header.append("items coded")
            rows = [[r, c, coded[r] if coded[r] is not None else "-"] for r, c in counts.items()]
        else:
            rows = [[r, c] for r, c in counts.items()]
        lines += _table(header, rows)
    lines += [f"- {k}: `{json.dumps(v)}`" for k, v in split.items() if k not in ("counts", "unit")]
    return lines + [""]


def _spread(rows: Sequence[Mapping[str, Any]], n: int) -> list[Mapping[str, Any]]:
    """At most ``n`` of ``rows``, evenly spread, the last one always kept."""
    if len(rows) <= n:
        return list(rows)
    picks = sorted({round(i * (len(rows) - 1) / (n - 1)) for i in range(n)})
    return [rows[i] for i in picks]


def _curve_table(rows: Sequence[Mapping[str, Any]], limit: int | None = None) -> list[str]:
    shown = _spread(rows, limit) if limit else list(rows)
    keys = list(dict.fromkeys(k for r in shown for k in r if k != "step"))
    return _table(["step", *keys], [[r.get("step"), *(r.get(k, "") for k in keys)]
                                    for r in shown])


def _training_section(run_dir: Path, fit: Mapping[str, Any]) -> list[str]:
    losses, history = fit.get("losses") or [], fit.get("history") or []
    if not losses and not history:
        return []
    lines = ["## Training", ""]
    if fit.get("steps") is not None:
        lines += [f"{fit['steps']} steps in {fit.get('seconds', '?')} s on "
                  f"{fit.get('device', '?')}.", ""]
    if (run_dir / CURVES_NAME).exists():
        lines += [f"![training curves]({CURVES_NAME})", ""]
    if losses:
        lines += ["Training loss (mean since the previous row):", "",
                  *_curve_table(losses, CURVE_ROWS), ""]
    if history:
        kept = f" (weights of step {fit['best_step']} kept)" if fit.get("best_step") else ""
        lines += [f"Validation{kept}:", "", *_curve_table(history), ""]
    return lines


def _without_train(config_text: str) -> str:
    """The config without its top-level ``train:`` block (a model that does not train)."""
    out, skipping = [], False
    for line in config_text.splitlines():
        if line and not line[0].isspace():
            skipping = line.startswith("train:")
        if not skipping:
            out.append(line)
    return "\n".join(out)


def _fit(metrics: Mapping[str, Any]) -> Mapping[str, Any]:
    fit = metrics.get("fit")
    return fit if isinstance(fit, Mapping) else {}


def render_report(run_dir: Path) -> str:
    run_dir = Path(run_dir)
    return _render(run_dir, *_load_run(run_dir))


def _render(run_dir: Path, config_text: str, metrics: Mapping[str, Any]) -> str:
    fit = _fit(metrics)
    lines = [f"# Run report: {metrics.get('name', run_dir.name)}", "",
             *_health_section(metrics.get("health")),
             f"Run directory: `{run_dir}`  ", f"Wall time: {metrics.get('wall_seconds', '?')} s",
             "", *_split_section(metrics), "## Metrics", "", *_metric_table(metrics), "",
             *_training_section(run_dir, fit)]
    plots = sorted(p.name for p in run_dir.glob("*.png") if p.name != CURVES_NAME)
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    artifacts = metrics.get("artifacts", {})
    if artifacts:
        lines += ["## Artifacts", ""] + [f"- {k}: `{v}`" for k, v in artifacts.items()] + [""]
    if metrics.get("trains") is False:
        config_text = _without_train(config_text)
    lines += ["## Config", "", "```yaml", config_text.rstrip(), "```", ""]
    return "\n".join(lines)


def plot_curves(fit: Mapping[str, Any], path: Path) -> Path | None:
    """Training loss and validation metrics by step, one panel each; None without matplotlib
    or without curves."""
    losses, history = fit.get("losses") or [], fit.get("history") or []
    if not losses and not history:
        return None
    panels = [rows for rows in (losses, history) if rows]
    fig = new_figure((6 * len(panels), 3.5))
    if fig is None:
        return None
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, rows, title in zip(axes[0], panels, ("training" if losses else "validation",
                                                 "validation")):
        for key in dict.fromkeys(k for r in rows for k in r if k not in ("step", "seconds")):
            points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if points:
                ax.plot(*zip(*points), label=key, marker="." if len(points) < 30 else None)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.legend(fontsize=8)
    if losses and all(r.get("loss", 0) > 0 for r in losses):
        axes[0, 0].set_yscale("log")
    return save_figure(fig, path)


def new_figure(size: tuple[float, float]) -> Any:
    """A matplotlib ``Figure`` of that size in inches, or None without matplotlib.

    The object API alone: no pyplot (its import and global state, a backend switch in the
    caller's process), and the figure is freed with its last reference.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure(figsize=size)


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out and write ``fig`` as a PNG, atomically."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    return path


def write_report(run_dir: Path) -> Path:
    """``report.md`` of a finished run, and its ``training_curves.png`` unless the run's
    ``export.plots`` is false."""
    run_dir = Path(run_dir)
    config_text, metrics = _load_run(run_dir)  # read once: the plot and the text share it
    export = (_config(config_text, run_dir).get("export") or {})
    if export.get("plots", True) is not False:
        plot_curves(_fit(metrics), run_dir / CURVES_NAME)
    path = run_dir / REPORT_NAME
    write_text_atomic(path, _render(run_dir, config_text, metrics))
    return path


def _config(text: str, run_dir: Path) -> dict[str, Any]:
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RqfError(f"{run_dir / 'config.yaml'}: not valid YAML "
                       f"({str(exc).splitlines()[0]})") from None
    return cfg if isinstance(cfg, dict) else {}


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def compare_runs(*runs: Path) -> str:
    """What differs in the configs of ``runs``, then every metric of each, side by side (with
    the difference when there are two)."""
    if len(runs) < 2:
        raise RqfError("rqf report: give two or more run directories to compare")
    loaded = [_load_run(Path(r)) for r in runs]
    names = [Path(r).name for r in runs]
    configs = [flatten(_config(text, Path(r))) for (text, _), r in zip(loaded, runs)]
    # a section a run lacks (train, for a model that does not train) means nothing for it:
    # such a key is compared among the runs that have the section
    sections = [{k.split(".")[0] for k in c} for c in configs]
    differ = [k for k in dict.fromkeys(k for c in configs for k in c)
              if k not in ("name", "output_dir") and len({json.dumps(c.get(k)) for c, has in
                                                          zip(configs, sections)
                                                          if k.split(".")[0] in has}) > 1]
    lines = [f"# {' vs '.join(names)}", "", "## What differs in their configs", ""]
    lines += _table(["key", *names], [[k, *(c.get(k, "-") for c in configs)] for k in differ]) \
        if differ else ["Nothing: the runs were configured alike (seed, data and model)."]
    flats = [{f"{s}.{k}": v for s in SPLITS if isinstance(m.get(s), Mapping)
              for k, v in flatten(m[s]).items()} | {"wall_seconds": m.get("wall_seconds")}
             for _, m in loaded]
    two = len(runs) == 2
    rows = []
    for key in dict.fromkeys(k for f in flats for k in f):
        values = [f.get(key) for f in flats]
        row = [key, *(v if v is not None else "-" for v in values)]
        if two:
            row.append(float(values[1]) - float(values[0])
                       if all(_numeric(v) for v in values) else "")
        rows.append(row)
    lines += ["", "## Metrics", "", *_table(["metric", *names, *(["difference"] if two else [])],
                                            rows)]
    return "\n".join(lines) + "\n"
