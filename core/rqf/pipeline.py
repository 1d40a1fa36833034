"""Builds the components a pipeline names and runs them: split, fit, evaluate, export."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from rqf.config import (COMPONENT_SECTIONS, PIPELINE_PARAMS, PipelineConfig, apply_overrides,
                        load_yaml, validate_config)
from rqf.errors import ConfigError, DataError, RqfError
from rqf.interfaces import Dataset, ItemVectors, Model, RunContext, Splitter, Storage
from rqf.io import check_output, write_json_atomic, write_text_atomic
from rqf.plugins import Plugins, get_plugins
from rqf.rundir import FINISHED_MARKER, MODEL_FILE, RunFolder, read_run_config
from rqf.threads import ENV as THREADS_ENV, apply_threads
from rqf.tracking import build_trackers
from rqf.training import TrainConfig, init_distributed, resolve_device, seed_everything


def resolve_config(config: str | Path | Mapping[str, Any], overrides: Iterable[str] = (),
                   plugins: Plugins | None = None, source: Path | None = None) -> PipelineConfig:
    """Load (when a path), override and validate a pipeline.

    A file's relative paths resolve against its folder, a mapping's against the working
    directory; a path given in ``overrides`` (``--set``) is the user's and resolves against the
    working directory, for ``rqf run`` and ``rqf encode`` alike. ``source`` names the file the
    pipeline came from in error messages.
    """
    plugins = plugins or get_plugins()
    if isinstance(config, Mapping):
        raw, base_dir = dict(config), Path.cwd()
    else:
        source = Path(config)
        raw, base_dir = load_yaml(source), source.resolve().parent
    overrides = list(overrides)
    raw = apply_overrides(raw, overrides)
    _paths_from_cwd(raw, overrides, plugins)
    try:
        return validate_config(raw, plugins.registry, base_dir, source)
    except ConfigError as exc:
        raise ConfigError(_with_failures(str(exc), plugins, f"{source}: " if source else "")) \
            from None


def _paths_from_cwd(raw: dict[str, Any], overrides: list[str], plugins: Plugins) -> None:
    """Make each relative path value set by an override absolute against the working directory
    (a key that is no path parameter, or a component that does not resolve, is left to the
    validation to judge)."""
    for item in overrides:
        keys = item.split("=", 1)[0].strip().split(".")
        if keys == ["output_dir"]:
            section, params = raw, PIPELINE_PARAMS
        elif len(keys) == 2 and keys[0] in COMPONENT_SECTIONS and isinstance(raw.get(keys[0]), dict):
            section = raw[keys[0]]
            try:
                params = plugins.registry.get(keys[0], section.get("type")).params
            except RqfError:
                continue
        else:
            continue
        value = section.get(keys[-1])
        is_path = any(p.name == keys[-1] and p.type == "path" for p in params)
        if is_path and isinstance(value, str) and value and not os.path.isabs(value):
            section[keys[-1]] = os.path.abspath(value)


def _with_failures(message: str, plugins: Plugins, prefix: str = "") -> str:
    """Each line of ``message`` after ``prefix``; an unknown name also lists broken plugins."""
    lines = []
    for line in message.splitlines():
        if "unknown" in line and plugins.failures:
            names = ", ".join(f"{f.name} ({f.error})" for f in plugins.failures)
            line += f"; plugins that failed to load: {names}"
        lines.append(prefix + line)
    return "\n".join(lines)


@dataclass
class Components:
    storage: Storage
    dataset: Dataset
    splitter: Splitter
    splits: dict[str, Dataset]
    model: Model
    adapted: list[str] = field(default_factory=list)  # defaults changed to fit the data


def run_outputs(cfg: PipelineConfig, plugins: Plugins | None = None) -> tuple[str, ...]:
    """What the pipeline's model writes at the top of the run folder, checked to stay in it."""
    registry = (plugins or get_plugins()).registry
    cls = registry.get("model", cfg["model"]["type"])
    storage = registry.get("storage", cfg["storage"]["type"])
    names = _claimed(cls, cfg["export"], (storage,)) + tracker_outputs(cfg, plugins)
    for name in names:
        parts = name.split("/") if isinstance(name, str) else [None]
        if len(parts) > 2 or any(not isinstance(part, str) or not part or part in (".", "..")
                                 or "\\" in part for part in parts) or parts[0].startswith("."):
            raise ConfigError(f"export: {name!r} is not a plain file or folder name inside the "
                              "run folder (or folder/pattern of the files rqf writes in it)")
    return names


def known_outputs(plugins: Plugins | None = None) -> tuple[str, ...]:
    """What any installed model writes in a run folder with its default export settings."""
    registry = (plugins or get_plugins()).registry
    storages = [entry.cls for entry in registry.entries("storage")]
    names: list[str] = []
    for entry in registry.entries("model"):
        try:
            names += _claimed(entry.cls, entry.cls.resolve_export({}), storages)
        except Exception:  # a plugin's declaration is its own; an odd one claims nothing
            continue
    return tuple(names) + tuple(name for entry in registry.entries("tracker")
                                for name in entry.cls.outputs)


def tracker_outputs(cfg: PipelineConfig, plugins: Plugins | None = None) -> tuple[str, ...]:
    """What the run's trackers write in its folder (kept when it is resumed)."""
    registry = (plugins or get_plugins()).registry
    return tuple(name for entry in (cfg["train"].get("trackers") or [])
                 for name in registry.get("tracker", entry["type"], "train.trackers").outputs)


def _claimed(model: type[Model], export: Mapping[str, Any], storages: Sequence[type]
             ) -> tuple[str, ...]:
    """A model's run outputs, and in each folder the data's writer fills, that writer's files."""
    return (*model.run_outputs(export),
            *(f"{folder}/{name}" for folder in model.writer_folders(export)
              for storage in storages for name in storage.writer_files))


def _params(section: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in section.items() if k != "type"}


def open_storage(section: Mapping[str, Any], plugins: Plugins | None = None) -> Storage:
    """The storage a validated pipeline section names, opened (the caller closes it)."""
    registry = (plugins or get_plugins()).registry
    return registry.get("storage", section["type"])(**_params(section)).open()


def build_data(storage_section: Mapping[str, Any], dataset_section: Mapping[str, Any],
               plugins: Plugins | None = None) -> tuple[Storage, Dataset]:
    """Open the storage and build the dataset of two validated pipeline sections.

    The caller closes the storage; on failure here it is already closed.
    """
    registry = (plugins or get_plugins()).registry
    storage = open_storage(storage_section, plugins)
    try:
        dataset = registry.get("dataset", dataset_section["type"])(storage,
                                                                   **_params(dataset_section))
    except BaseException:
        storage.close()
        raise
    return storage, dataset


def build(cfg: PipelineConfig, plugins: Plugins | None = None) -> Components:
    """Open the storage, build the dataset, split it and construct the model."""
    registry = (plugins or get_plugins()).registry
    storage, dataset = build_data(cfg["storage"], cfg["dataset"], plugins)
    try:
        splitter = registry.get("splitter", cfg["splitter"]["type"])(seed=cfg["seed"],
                                                                   **_params(cfg["splitter"]))
        splits = splitter.split(dataset)
        if not splits.get("train") or len(splits["train"]) == 0:
            raise RqfError(f"splitter {splitter.name!r} left no training samples")
        model_cls = registry.get("model", cfg["model"]["type"])
        info = dataset.describe()
        adapted = cfg.fit_model_defaults(model_cls, info)
        model = model_cls(info, **_params(cfg["model"]))
        model.check(dataset, TrainConfig(**cfg["train"]))
    except BaseException:
        storage.close()
        raise
    return Components(storage, dataset, splitter, splits, model, adapted)


def validate(config: str | Path | Mapping[str, Any], overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Everything short of training: components resolve, files open, shapes agree."""
    cfg = resolve_config(config, overrides)
    run_outputs(cfg)
    parts = build(cfg)
    try:
        if parts.model.reads_vectors:
            source = parts.dataset.export_source()
            if isinstance(source, ItemVectors) and len(source.ids):
                source.read(0, 1)  # a storage checks the values it serves at their first read
        return {"config": cfg.data, "data": parts.dataset.describe(),
                "split": parts.splitter.report, "adapted": parts.adapted}
    finally:
        parts.storage.close()


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    artifacts: dict[str, str] = field(default_factory=dict)
    summary: str = ""


def run(config: str | Path | Mapping[str, Any], overrides: Iterable[str] = (),
        force: bool = False, resume: bool = False,
        echo: Callable[[str], None] | None = None) -> RunResult:
    """Run a pipeline end to end; the Python twin of ``rqf run``."""
    echo = echo or (lambda msg: print(msg, file=sys.stderr))
    cfg = resolve_config(config, overrides)
    train_cfg = TrainConfig(**cfg["train"])
    info = init_distributed(train_cfg.device)
    out = Path(cfg["output_dir"])
    folder = RunFolder(out, run_outputs(cfg), known_outputs(), kept=tracker_outputs(cfg))
    if resume and (out / "config.yaml").is_file():
        try:  # the model keys the pipeline leaves to defaults take what the run decided
            cfg.keep_decided_defaults(read_run_config(out / "config.yaml"))
        except RqfError:
            pass  # the folder's own check reports a broken config.yaml
    if info.is_main:
        folder.check(force, resume, cfg)  # before anything is read or written
    if train_cfg.threads is not None and not os.environ.get(THREADS_ENV):
        apply_threads(train_cfg.threads)  # rqf --threads N (or RQF_THREADS) outranks it
    seed_everything(cfg["seed"])
    parts = build(cfg)
    for note in parts.adapted:
        echo(note)
    trackers = build_trackers(train_cfg.trackers if info.is_main else [], out,
                              get_plugins().registry, echo)  # built before any change
    started = time.perf_counter()
    prepared: list[bool] = []
    trainer = None  # the run's Trainer, once built: a resume's step is known from it

    def prepare() -> None:
        """The folder's first change: --force has cleared it, --resume clears what goes stale
        only now, after every check of the resume passed."""
        if info.is_main and not prepared:
            if resume:
                folder.begin_resume()
            # a model that does not train keeps no train section: nothing in it meant anything
            write_text_atomic(out / "config.yaml",
                              cfg.to_yaml(("train",) if parts.model.gradient_free else ()))
            trackers.start(cfg["name"], cfg.data, getattr(trainer, "resumed_from", None))
        prepared.append(True)

    try:
        if info.is_main:
            # only once the new pipeline proved to build: takes the folder's lock, then
            # --force removes what rqf wrote there
            folder.open(force, resume, cfg, echo)
            if not resume:
                prepare()
        _barrier(info)
        ctx = _context(cfg, train_cfg, parts.model, out, resume, info, echo)
        if ctx.trainer is not None:
            ctx.trainer.on_start = prepare
            ctx.trainer.trackers = trackers
            trainer = ctx.trainer
        counts = {role: len(view) for role, view in parts.splits.items()}
        ctx.echo(f"{cfg['name']}: {parts.dataset.name} over {parts.storage.name}, split by "
                 f"{parts.splitter.name} {counts}, model {parts.model.name}")
        fit = parts.model.fit(parts.splits["train"], parts.splits.get("valid"), ctx)
        prepare()  # a model fit without the loop: its fit was the last check
        split = {**parts.splitter.report, "unit": parts.dataset.sample_unit}
        result = RunResult(out, {"name": cfg["name"], "split": split, "fit": fit,
                                 "trains": not parts.model.gradient_free})
        if info.is_main:
            if parts.model.keeps_weights:
                parts.model.save(out / MODEL_FILE)
            _evaluate_and_export(parts, ctx, result, echo)
            result.metrics["wall_seconds"] = round(time.perf_counter() - started, 3)
            write_json_atomic(out / FINISHED_MARKER, result.metrics)
            from rqf.report import write_report

            result.artifacts["report"] = str(write_report(out))
            result.summary = parts.model.summarize(result.metrics)
            trackers.finish_run(out, result.metrics, (fit or {}).get("steps"))
        _barrier(info)
        return result
    except BaseException:
        trackers.fail()
        raise
    finally:
        folder.close()
        parts.storage.close()


def _context(cfg: PipelineConfig, train_cfg: TrainConfig, model: Model, out: Path,
             resume: bool, info, echo: Callable[[str], None]) -> RunContext:
    """The run as a model sees it; a model that trains by gradient gets the run's Trainer."""
    echo = echo if info.is_main else (lambda _msg: None)
    trainer = None
    if not model.gradient_free:
        from rqf.training import Trainer

        trainer = Trainer(train_cfg, out, seed=cfg["seed"], resume=resume, echo=echo)
    return RunContext(run_dir=out, train=train_cfg, export=cfg["export"], seed=cfg["seed"],
                      resume=resume, is_main=info.is_main, echo=echo, trainer=trainer)


def _evaluate_and_export(parts: Components, ctx: RunContext, result: RunResult,
                         echo: Callable[[str], None]) -> None:
    """Metrics of every split and of all data, the artifacts and the health check, all from
    one ``predict`` pass handed over as a value."""
    model, metrics = parts.model, result.metrics
    predictions = model.predict(parts.dataset, parts.splits)
    given = () if predictions is None else (predictions,)  # a model without predict takes none
    for role in ("train", "valid", "test"):
        if role in parts.splits and len(parts.splits[role]):
            metrics[role] = model.evaluate(parts.splits[role], *given)
    metrics["all"] = model.evaluate(parts.dataset, *given)
    result.artifacts = model.export(parts.dataset, ctx, *given)
    metrics["artifacts"] = result.artifacts
    problems = model.health(metrics)
    if problems is None:
        metrics["health"] = {"checked": False, "healthy": None, "warnings": []}
        echo(f"health: not checked (model {model.name!r} has no checks)")
        return
    metrics["health"] = {"checked": True, "healthy": not problems, "warnings": problems}
    for problem in problems:
        echo(f"warning: unhealthy result: {problem}")


def encode(run_dir: str | Path, out: str | Path, overrides: Iterable[str] = (),
           device: str = "auto", force: bool = False, join: bool = False) -> Path:
    """Reopen a finished run and encode the data its pipeline names (after ``overrides``,
    e.g. ``storage.items=new.h5``) with its model, into ``out``; the model decides the format.

    Every check runs before ``out`` is written: ``--set`` may change only the data
    (``storage.*``, ``dataset.*``), ``out`` may not be a file or folder the pipeline reads
    nor lie inside the run, and an existing ``out`` is replaced only with ``force``. ``join``:
    ``out`` holds the run's own semantic IDs, unchanged, and the new items, each with an ID no
    other item holds (``rqf.codes.join``).
    """
    run_dir, out = Path(run_dir), Path(out)
    plugins = get_plugins()
    cfg, cls = _reopen(run_dir, plugins, overrides)
    if not cls.keeps_weights:
        raise RqfError(f"{run_dir}: model {cls.name!r} keeps no weights and makes no codes; "
                       "there is nothing to encode with")
    model_path = _model_file(run_dir)
    _check_out(out, run_dir, cfg, plugins, force)
    if join and not (run_dir / "semantic_ids.h5").is_file():
        raise RqfError(f"--join: {run_dir} holds no semantic_ids.h5 to join the new items to")
    model = cls.load(model_path, device=device)
    storage, dataset = build_data(cfg["storage"], cfg["dataset"], plugins)
    with storage:
        want, got = model.data_info.get("input_dim"), dataset.describe().get("input_dim")
        if want is not None and got is not None and want != got:
            raise DataError(f"the data is {got}-d but the model in {run_dir} expects "
                            f"{want}-d input")
        if not join:
            return Path(model.encode(dataset, out))
        from rqf.codes.join import join_semantic_ids

        new = out.with_name(f".{out.name}.new.tmp")
        try:
            model.encode(dataset, new)
            report = join_semantic_ids(run_dir / "semantic_ids.h5", new, out)
        finally:
            new.unlink(missing_ok=True)
        print(f"joined: {report}", file=sys.stderr)
        return out


def load(run_dir: str | Path, device: str = "auto") -> Model:
    """The model of a finished run, ready to use: its saved weights, or, for a model that keeps
    none (a baseline refit in seconds), the model fit again on the run's training split."""
    run_dir = Path(run_dir)
    plugins = get_plugins()
    cfg, cls = _reopen(run_dir, plugins)
    if cls.keeps_weights:
        return cls.load(_model_file(run_dir), device=device)
    where = resolve_device(device, "device")  # the same refusal as a model file's
    parts = build(cfg, plugins)
    try:
        ctx = RunContext(run_dir=run_dir, train=TrainConfig(**cfg["train"]), export=cfg["export"],
                         seed=cfg["seed"], echo=lambda _msg: None)
        parts.model.fit(parts.splits["train"], parts.splits.get("valid"), ctx)
    finally:
        parts.storage.close()
    parts.model.place(where)
    return parts.model


def _reopen(run_dir: Path, plugins: Plugins, overrides: Iterable[str] = ()
            ) -> tuple[PipelineConfig, type[Model]]:
    """A finished run's saved pipeline, validated after ``overrides`` (which may change only
    the data: the model is used as it was trained), and its model class."""
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise RqfError(f"{run_dir}: not an rqf run folder (no config.yaml)")
    for override in overrides:
        key = str(override).split("=", 1)[0].strip()
        if key.split(".", 1)[0] not in ("storage", "dataset"):
            raise ConfigError(f"--set {key}: rqf encode uses the model as it was trained; only "
                              "the data to encode (storage.*, dataset.*) may change")
    # --set paths are the user's: relative to the working directory, not to the run
    cfg = resolve_config(read_run_config(config_path), overrides, plugins, source=config_path)
    return cfg, plugins.registry.get("model", cfg["model"]["type"])


def _model_file(run_dir: Path) -> Path:
    path = run_dir / MODEL_FILE
    if not path.is_file():
        raise RqfError(f"{path}: missing (the run has not finished training; rqf run --resume "
                       "finishes it)")
    return path


def input_paths(cfg: PipelineConfig, plugins: Plugins | None = None) -> list[tuple[str, Path]]:
    """(key path, path) of every file or folder parameter of the pipeline's components."""
    registry = (plugins or get_plugins()).registry
    found = []
    for section in COMPONENT_SECTIONS:
        cls = registry.get(section, cfg[section]["type"])
        for param in cls.params:
            value = cfg[section].get(param.name)
            if param.type == "path" and value is not None:
                found.append((f"{section}.{param.name}", Path(value)))
    return found


def _check_out(out: Path, run_dir: Path, cfg: PipelineConfig, plugins: Plugins,
               force: bool) -> None:
    target = out.resolve()
    if target == run_dir.resolve() or run_dir.resolve() in target.parents:
        raise RqfError(f"--out {out}: inside the run folder {run_dir}; write elsewhere (a run's "
                       "own exports are redone by rqf run --resume)")
    check_output(out, force, [(f"the pipeline reads {path} ({key})", path)
                              for key, path in input_paths(cfg, plugins)])


def _barrier(info) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()
