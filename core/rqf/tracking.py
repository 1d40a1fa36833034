"""Trackers: where a run reports as it goes, besides its own folder.

A tracker is a component like a storage or a model: registered through the ``register_trackers``
hook (an entry point of the ``rqf`` group for a third party's), named in the pipeline's
``train.trackers`` (``[tensorboard, mlflow]``, or ``{type: mlflow, experiment: ablations}`` with
its parameters), and handed, on the run's main process, the resolved config, every loss
read-out and validation, the final metrics (flattened as ``test/recall@10``) and the run's files.
rqf ships ``tensorboard`` (event files in the run folder), ``mlflow`` (a local file store beside
the run folders unless ``MLFLOW_TRACKING_URI`` names another) and ``wandb`` (where installed;
``WANDB_MODE=offline`` works without an account).

A tracker that fails while the run goes on is reported in one line and left out from then on:
a lost dashboard never costs a run.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

from rqf.errors import ConfigError, RqfError
from rqf.interfaces import Component
from rqf.params import Param

FILES = ("config.yaml", "metrics.json", "report.md")  # sent to trackers that keep files


class Tracker(Component):
    """Receives a run's config, losses, validation metrics, final metrics and files.

    Subclasses override what they record; every method has a do-nothing default. ``outputs``
    names what the tracker writes at the top of the run folder (claimed like a model's
    outputs, kept when a run is resumed).
    """

    outputs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, run_dir: Path, **params: Any) -> None:
        self.config = self.resolve(params, f"train.trackers: {self.name}")
        self.run_dir = Path(run_dir)

    def start(self, name: str, config: Mapping[str, Any], resumed_from: int | None) -> None:
        """The run begins (or goes on from a checkpoint at step ``resumed_from``)."""

    def log_losses(self, step: int, values: Mapping[str, float]) -> None:
        """The mean training loss (and the model's logged terms) at ``step``."""

    def log_validation(self, step: int, values: Mapping[str, float]) -> None:
        """Validation metrics at ``step`` (with ``seconds`` of training so far)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None) -> None:
        """The final metrics, flattened (``test/recall@10``), at the last step."""

    def log_files(self, paths: Sequence[Path]) -> None:
        """The run's files worth keeping with it (config, metrics, report, plots)."""

    def finish(self, ok: bool) -> None:
        """The run ended; ``ok`` is False when it failed."""


def resolve_trackers(entries: Any, registry: Any, errors: list[str]) -> list[dict[str, Any]]:
    """``train.trackers`` as ``[{"type": name, **params}]``, every name and parameter checked."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        errors.append(f"train.trackers: expected a list of tracker names, got {entries!r}")
        return []
    out = []
    for i, entry in enumerate(entries):
        section = {"type": entry} if isinstance(entry, str) else entry
        if not isinstance(section, Mapping) or "type" not in section:
            errors.append(f"train.trackers[{i}]: expected a name or a mapping with 'type', "
                          f"got {entry!r}")
            continue
        try:
            cls = registry.get("tracker", str(section["type"]), f"train.trackers[{i}]")
        except ConfigError as exc:
            errors.append(str(exc))
            continue
        from rqf.params import validate_params

        values = validate_params(cls.params, section, f"train.trackers[{i}]", ignore=("type",),
                                 errors=errors)
        out.append({"type": cls.name, **values})
    return out


def flat_numbers(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Every finite number of nested metrics as ``a/b`` keys (a list as ``a/b/1``, ``a/b/2``,
    counted from 1 like the levels it holds); texts and flags are left out."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_numbers(value, name + "/"))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value, 1):
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    out[f"{name}/{i}"] = float(v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value):
            out[name] = float(value)
    return out


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """The resolved config as ``section.key`` texts (what trackers call parameters)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


class Trackers:
    """The run's trackers as one: each call goes to every tracker still working."""

    def __init__(self, trackers: Sequence[Tracker], echo: Callable[[str], None]) -> None:
        self.trackers = list(trackers)
        self.echo = echo

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def _each(self, method: str, *args: Any) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:  # a tracker's failure is its own: the run goes on
                self.trackers.remove(tracker)
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                self.echo(f"warning: tracker {tracker.name} failed in {method} and is left out "
                          f"({type(exc).__name__}: {first})")

    def start(self, name: str, config: Mapping[str, Any], resumed_from: int | None) -> None:
        self._each("start", name, config, resumed_from)

    def log_losses(self, step: int, values: Mapping[str, float]) -> None:
        self._each("log_losses", step, values)

    def log_validation(self, step: int, values: Mapping[str, float]) -> None:
        self._each("log_validation", step, values)

    def finish_run(self, run_dir: Path, metrics: Mapping[str, Any], step: int | None) -> None:
        self._each("log_metrics", flat_numbers({k: v for k, v in metrics.items()
                                                if k not in ("fit", "artifacts")}), step)
        files = [run_dir / name for name in FILES] + sorted(run_dir.glob("*.png"))
        self._each("log_files", [p for p in files if p.is_file()])
        self._each("finish", True)

    def fail(self) -> None:
        self._each("finish", False)


def build_trackers(entries: Sequence[Mapping[str, Any]], run_dir: Path, registry: Any,
                   echo: Callable[[str], None]) -> Trackers:
    made = []
    for entry in entries:
        cls = registry.get("tracker", entry["type"], "train.trackers")
        made.append(cls(run_dir, **{k: v for k, v in entry.items() if k != "type"}))
    return Trackers(made, echo)


def _need(module: str, tracker: str, package: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise RqfError(f"train.trackers: {tracker} needs the {package} package: pip install "
                       f"{package}") from None


class TensorBoardTracker(Tracker):
    """TensorBoard event files in the run folder (tensorboard --logdir runs/)."""

    name = "tensorboard"
    outputs = ("tensorboard", "tensorboard/events.out.tfevents.*")

    def __init__(self, run_dir: Path, **params: Any) -> None:
        super().__init__(run_dir, **params)
        _need("tensorboard", self.name, "tensorboard")
        self.writer: Any = None

    def start(self, name, config, resumed_from):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"),
                                    purge_step=resumed_from)
        import yaml

        self.writer.add_text("config", "```yaml\n" + yaml.safe_dump(dict(config),
                                                                    sort_keys=False) + "```")

    def log_losses(self, step, values):
        for key, value in values.items():
            self.writer.add_scalar(f"train/{key}", value, step)

    def log_validation(self, step, values):
        for key, value in values.items():
            if key not in ("step", "seconds"):
                self.writer.add_scalar(f"valid/{key}", value, step)

    def log_metrics(self, metrics, step):
        for key, value in metrics.items():
            self.writer.add_scalar(f"final/{key}", value, step or 0)

    def finish(self, ok):
        if self.writer is not None:
            self.writer.close()


def mlflow_key(key: str) -> str:
    """A metric name MLflow accepts (letters, digits, ``_-. /:``): ``recall@10`` becomes
    ``recall_at_10``."""
    return "".join(c if c.isalnum() or c in "_-. /:" else "_" for c in
                   key.replace("@", "_at_"))


class MLflowTracker(Tracker):
    """An MLflow run of the parameters, metrics by step and files (a local store by default).

    Without ``MLFLOW_TRACKING_URI`` or ``tracking_uri`` the store is ``mlruns/`` beside the run
    folder, shared by the runs there (``mlflow ui --backend-store-uri runs/mlruns``)."""

    name = "mlflow"
    params = (
        Param("tracking_uri", str, None, "where runs are stored (null: MLFLOW_TRACKING_URI, "
              "else mlruns/ beside the run folder)", nullable=True),
        Param("experiment", str, None, "experiment name (null: the pipeline's name)",
              nullable=True),
    )

    def __init__(self, run_dir: Path, **params: Any) -> None:
        super().__init__(run_dir, **params)
        _need("mlflow", self.name, "mlflow-skinny")
        self.client: Any = None
        self.run_id: str | None = None

    def uri(self) -> str:
        uri = self.config["tracking_uri"] or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = (self.run_dir.resolve().parent / "mlruns").as_uri()
        if uri.startswith("file:") or "://" not in uri:
            # MLflow keeps its file store for compatibility, behind this switch
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        return uri

    def start(self, name, config, resumed_from):
        from mlflow.entities import Param as MParam
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri())
        experiment = self.config["experiment"] or name
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        tags = {"mlflow.runName": self.run_dir.name, "rqf.run_dir": str(self.run_dir.resolve())}
        if resumed_from is not None:
            tags["rqf.resumed_from_step"] = str(resumed_from)
        self.run_id = self.client.create_run(experiment_id, tags=tags).info.run_id
        params = [MParam(k, v[:6000]) for k, v in flat_config(config).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def _metrics(self, values: Mapping[str, float], step: int, prefix: str = "") -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(mlflow_key(prefix + k), float(v), now, step) for k, v in values.items()
                 if isinstance(v, (int, float)) and k not in ("step", "seconds")]
        for i in range(0, len(batch), 500):
            self.client.log_batch(self.run_id, metrics=batch[i:i + 500])

    def log_losses(self, step, values):
        self._metrics(values, step, "train/")

    def log_validation(self, step, values):
        self._metrics(values, step, "valid/")

    def log_metrics(self, metrics, step):
        self._metrics(metrics, step or 0)

    def log_files(self, paths):
        for path in paths:
            self.client.log_artifact(self.run_id, str(path))

    def finish(self, ok):
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


class WandbTracker(Tracker):
    """A Weights & Biases run (WANDB_MODE=offline keeps it on this machine).

    Its files go in ``wandb/`` beside the run folder."""

    name = "wandb"
    params = (Param("project", str, None, "project (null: the pipeline's name)", nullable=True),)

    def __init__(self, run_dir: Path, **params: Any) -> None:
        super().__init__(run_dir, **params)
        self.wandb = _need("wandb", self.name, "wandb")
        self.run: Any = None

    def start(self, name, config, resumed_from):
        self.run = self.wandb.init(project=self.config["project"] or name,
                                   name=self.run_dir.name, dir=str(self.run_dir.resolve().parent),
                                   config=flat_config(config))

    def log_losses(self, step, values):
        self.run.log({f"train/{k}": v for k, v in values.items()}, step=step)

    def log_validation(self, step, values):
        self.run.log({f"valid/{k}": v for k, v in values.items() if k not in ("step",)},
                     step=step)

    def log_metrics(self, metrics, step):
        self.run.summary.update(dict(metrics))

    def finish(self, ok):
        if self.run is not None:
            self.run.finish(exit_code=0 if ok else 1)
