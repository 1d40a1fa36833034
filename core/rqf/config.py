"""Pipeline files: strict YAML loading, ``--set`` overrides and validation against components."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from rqf.errors import ConfigError
from rqf.params import Param, closest, validate_params
from rqf.registry import Registry
from rqf.training.config import TRAIN_PARAMS

TOP_LEVEL = ("name", "output_dir", "seed", "storage", "dataset", "splitter", "model", "train",
             "export")
COMPONENT_SECTIONS = ("storage", "dataset", "splitter", "model")
PIPELINE_PARAMS = (
    Param("name", str, "run", "name of the run, shown in reports"),
    Param("output_dir", "path", "runs/run", "run directory, relative to the pipeline file "
          "(given with --set: to the working directory)"),
    Param("seed", int, 0, "seed for splits, initialisation and batch order"),
)


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate keys instead of keeping the last one."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                              _mapping_without_duplicates)

# YAML 1.1 reads 1:30 as the base-60 integer 90 and 1:30.5 as 90.5; a pipeline means neither:
# such values stay strings, and validation names the key that expected a number
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"""^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$""",
               re.X), list("-+0123456789"))
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9_]+(?:[eE][-+][0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _load_value(text: str) -> Any:
    loader = _StrictLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_yaml(path: Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: pipeline file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read pipeline file ({exc})") from None
    loader = _StrictLoader(text)  # a SafeLoader: no object construction from tags
    try:
        data = loader.get_single_data()
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested deeper than a pipeline can be") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise ConfigError(f"{path}: a pipeline must be a mapping of sections, but the file is {kind}")
    problem = shape_problem(data)
    if problem:
        raise ConfigError(f"{path}: {problem}")
    return data


MAX_DEPTH = 32
MAX_VALUES = 200_000  # values once YAML aliases are expanded; a pipeline has hundreds


def _children(node: Any) -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        return [(str(k), v) for k, v in node.items()]
    if isinstance(node, list):
        return [(f"[{i}]", v) for i, v in enumerate(node)]
    return []


def shape_problem(data: Any) -> str | None:
    """Why ``data`` cannot be a pipeline's value: nested deeper than MAX_DEPTH, more than
    MAX_VALUES values once YAML aliases are expanded (a "billion laughs" file), or a value that
    contains itself; None when it can.

    Each distinct list or mapping is measured once (aliases share them), so a file that would
    expand to billions of values is refused in the time it takes to read it.
    """
    measured: dict[int, tuple[int, int]] = {}  # id -> (depth below, values once expanded)
    open_nodes: set[int] = set()
    stack = [data]
    while stack:
        node = stack[-1]
        values = list(node.values()) if isinstance(node, dict) else node \
            if isinstance(node, list) else []
        if id(node) in measured or not values:
            measured.setdefault(id(node), (0, 1))
            stack.pop()
            continue
        pending = [v for v in values if id(v) not in measured and isinstance(v, (dict, list))
                   and v]
        if pending and id(node) not in open_nodes:
            open_nodes.add(id(node))
            if any(id(v) in open_nodes for v in pending):
                return "a value contains itself (a YAML alias to its own anchor)"
            stack.extend(pending)
            continue
        kids = [measured.get(id(v), (0, 1)) for v in values]
        open_nodes.discard(id(node))
        measured[id(node)] = (1 + max(d for d, _ in kids), 1 + sum(c for _, c in kids))
        stack.pop()
    depth, values = measured[id(data)]
    if values > MAX_VALUES:
        return (f"expands to more than {MAX_VALUES:,} values (YAML aliases repeat what they "
                f"point to): {values:,}; a pipeline's values are a few hundred")
    if depth > MAX_DEPTH:
        where, node = [], data
        for _ in range(MAX_DEPTH + 1):  # follow the deepest branch to the first value too deep
            key, node = max(_children(node), key=lambda kv: measured.get(id(kv[1]), (0, 1))[0])
            where.append(key)
        path = ".".join(where).replace(".[", "[")
        return (f"{path}: nested more than {MAX_DEPTH} levels deep; a pipeline's values are "
                "plain numbers, strings, lists and mappings")
    return None


# what every run may export, whatever its model: the training curves are plotted by the core
CORE_EXPORT_PARAMS = (
    Param("plots", bool, True, "save plots (training curves, and the model's own) when "
          "matplotlib is there"),
)


def export_params(model: Any) -> tuple[Param, ...]:
    """The export keys a model's runs take: the core's, then the model's (which win)."""
    params = {p.name: p for p in CORE_EXPORT_PARAMS}
    params.update((p.name, p) for p in model.export_params)
    return tuple(params.values())


def apply_overrides(config: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides; values are typed by YAML rules."""
    config = copy.deepcopy(config)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        key_path, raw = item.split("=", 1)
        keys = [k for k in key_path.strip().split(".")]
        if not all(keys):
            raise ConfigError(f"--set {item!r}: empty key in {key_path!r}")
        try:
            value = _load_value(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        except RecursionError:
            raise ConfigError(f"--set {key_path}: the value is nested deeper than a pipeline "
                              "can be") from None
        node = config
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(keys[:depth + 1])} is not a section")
            node = child
        problem = shape_problem({key_path: value})  # the value's own YAML aliases
        if problem:
            raise ConfigError(f"--set {key_path}: {problem}")
        node[keys[-1]] = value
    return config


@dataclass
class PipelineConfig:
    """A validated pipeline: every section resolved with defaults, paths made absolute."""

    data: dict[str, Any]
    source: Path | None
    # the keys each component section spelled out (the rest are defaults); a section absent
    # here counts as spelled out whole (a run folder's config.yaml)
    written: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.data.get(name) or {})

    def fit_model_defaults(self, model_cls: Any, data_info: Mapping[str, Any]) -> list[str]:
        """Let the model fit the defaults the pipeline left out to the data
        (``Model.fit_defaults``): the changes go into the config (what config.yaml keeps) and
        are decided once; returns a line per change. A config read back from a run folder
        spells out every key, so nothing of it changes."""
        if "model" not in self.written:
            return []
        params = {k: v for k, v in self.data["model"].items() if k != "type"}
        params, notes = model_cls.fit_defaults(
            data_info, params, frozenset(params) - set(self.written["model"]))
        self.data["model"].update(params)
        self.written["model"] = tuple(params)
        return notes

    def keep_decided_defaults(self, saved: Mapping[str, Any]) -> None:
        """On --resume: the model keys this pipeline leaves to defaults take the values the
        run's own config.yaml (``saved``) decided, so the same pipeline resumes its run."""
        model = saved.get("model") or {}
        if "model" not in self.written or model.get("type") != self.data["model"]["type"]:
            return
        for key in set(self.data["model"]) - set(self.written["model"]) - {"type"}:
            if key in model:
                self.data["model"][key] = model[key]
        self.written["model"] = tuple(k for k in self.data["model"] if k != "type")

    def to_yaml(self, without: tuple[str, ...] = ()) -> str:
        """The resolved pipeline as YAML, less the top-level sections ``without`` names."""
        data = {k: v for k, v in self.data.items() if k not in without}
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def validate_config(raw: Mapping[str, Any], registry: Registry, base_dir: Path,
                    source: Path | None = None) -> PipelineConfig:
    """Resolve every section against its component's declared params, or raise one
    ConfigError listing every problem found (a line each)."""
    errors: list[str] = []
    for key in raw:
        if key not in TOP_LEVEL:
            hint = closest(str(key), TOP_LEVEL)
            errors.append(f"{key}: unknown top-level key"
                          + (f"; did you mean {hint!r}?" if hint else
                             f" (accepted: {', '.join(TOP_LEVEL)})"))
    top = validate_params(PIPELINE_PARAMS, {k: raw[k] for k in ("name", "output_dir", "seed")
                                            if k in raw}, "", base_dir, errors=errors)
    resolved: dict[str, Any] = dict(top)
    written: dict[str, tuple[str, ...]] = {}
    classes = {}
    for kind in COMPONENT_SECTIONS:
        section = raw.get(kind)
        if isinstance(section, str):
            section = {"type": section}
        if section is None:
            errors.append(f"{kind}: missing section (it needs at least 'type')")
        elif not isinstance(section, Mapping):
            errors.append(f"{kind}: expected a mapping with 'type', got {section!r}")
        elif "type" not in section:
            errors.append(f"{kind}.type: missing (available: {', '.join(registry.names(kind))})")
        else:
            try:
                cls = registry.get(kind, str(section["type"]), f"{kind}.type")
            except ConfigError as exc:
                errors.append(str(exc))
                continue
            classes[kind] = cls
            values = validate_params(cls.params, section, kind, base_dir, ignore=("type",),
                                     errors=errors)
            resolved[kind] = {"type": cls.name, **values}
            written[kind] = tuple(str(k) for k in section if k != "type")
    model = classes.get("model")
    try:
        train = train_section(raw, model) if model is not None else dict(_section(raw, "train"))
        resolved["train"] = validate_params(TRAIN_PARAMS, train, "train", base_dir,
                                            errors=errors)
        if "trackers" in resolved["train"]:
            from rqf.tracking import resolve_trackers

            resolved["train"]["trackers"] = resolve_trackers(resolved["train"]["trackers"],
                                                             registry, errors)
        if resolved["train"].get("epochs", 0) is None and not resolved["train"].get("max_steps"):
            errors.append("train: set epochs or max_steps (both are null)")
        export = _section(raw, "export")
        if model is not None:
            resolved["export"] = validate_params(export_params(model), export, "export",
                                                 base_dir, errors=errors)
    except ConfigError as exc:  # a section that is not a mapping
        errors.append(str(exc))
    if errors:
        raise ConfigError("\n".join(errors))
    return PipelineConfig(resolved, source, written)


def pipeline_schema(registry: Registry) -> dict[str, Any]:
    """JSON Schema of a pipeline file for the components in ``registry``."""
    from rqf.params import json_schema, object_schema

    props: dict[str, Any] = {p.name: json_schema(p) for p in PIPELINE_PARAMS}
    export: dict[str, Param] = {}
    for kind in COMPONENT_SECTIONS:
        variants = []
        for entry in registry.entries(kind):
            body = object_schema(entry.cls.params,
                                 {"type": {"const": entry.name,
                                           "description": entry.cls.summary()}}, ("type",))
            variants.append(body)
            if kind == "model":
                export.update((p.name, p) for p in export_params(entry.cls))
        names = [entry.name for entry in registry.entries(kind)]
        props[kind] = {"anyOf": [{"type": "string", "enum": names}, *variants],
                       "description": f"the {kind}: a registered name, with its parameters"}
    props["train"] = object_schema(TRAIN_PARAMS)
    props["export"] = object_schema(tuple(export.values()))
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "rqf pipeline", "type": "object", "properties": props,
            "required": list(COMPONENT_SECTIONS), "additionalProperties": False}


BUDGET_KEYS = ("epochs", "max_steps")


def train_section(raw: Mapping[str, Any], model_cls: Any) -> dict[str, Any]:
    """The user's ``train`` section over the model's own training defaults.

    A model states the budget that suits it (``train_defaults``, e.g. a number of steps);
    a user who gives ``epochs`` or ``max_steps`` sets the whole budget, so neither of the
    model's budget keys applies then, and ``max_steps`` alone is not capped by the default
    number of epochs.
    """
    user = dict(_section(raw, "train"))
    defaults = dict(getattr(model_cls, "train_defaults", {}) or {})
    if any(key in user for key in BUDGET_KEYS):
        for key in BUDGET_KEYS:
            defaults.pop(key, None)
        if "epochs" not in user:
            user["epochs"] = None  # max_steps alone is the whole budget, not capped by epochs
    return {**defaults, **user}


def _section(raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = raw.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name}: expected a mapping, got {value!r}")
    return value
