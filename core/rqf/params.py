"""Declared parameters of a component: names, types, defaults and help, and their validation."""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from rqf.errors import ConfigError

REQUIRED = object()
INT64_LIMIT = 2 ** 63

_TYPE_NAMES = {int: "int", float: "float", bool: "bool", str: "str", list: "list", dict: "mapping"}


@dataclass(frozen=True)
class Param:
    """One parameter a component accepts from the pipeline file.

    ``type`` is one of ``int``, ``float``, ``bool``, ``str``, ``"path"``, ``list`` (with an
    optional ``item`` type) or ``dict``. ``nullable`` lets ``null`` through; ``choices``
    limits the values.
    """

    name: str
    type: Any
    default: Any = REQUIRED
    help: str = ""
    choices: Sequence[Any] | None = None
    item: Any = None
    nullable: bool = False
    min: float | None = None
    max: float | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def type_name(self) -> str:
        if self.type == "path":
            name = "path"
        elif self.type is list and self.item is not None:
            name = f"list of {_TYPE_NAMES.get(self.item, str(self.item))}"
        else:
            name = _TYPE_NAMES.get(self.type, str(self.type))
        if self.choices:
            name = "one of " + ", ".join(repr(c) for c in self.choices)
        return name

    def describe(self) -> str:
        default = "required" if self.required else f"default {self.default!r}"
        return f"{self.name} ({self.type_name()}, {default}): {self.help}"

    def validate(self, value: Any, key_path: str, base_dir: Path | None = None) -> Any:
        if value is None:
            if self.nullable or (self.default is None and not self.required):
                return None
            raise ConfigError(f"{key_path}: expected {self.type_name()}, got null")
        value = _coerce(value, self.type, self.item, key_path, self.type_name())
        if self.type == "path" and base_dir is not None:
            path = Path(value).expanduser()
            value = os.path.normpath(path if path.is_absolute() else (base_dir / path))
        if self.choices is not None and value not in self.choices:
            hint = closest(str(value), [str(c) for c in self.choices])
            raise ConfigError(
                f"{key_path}: expected one of {', '.join(repr(c) for c in self.choices)}, "
                f"got {value!r}" + (f"; did you mean {hint!r}?" if hint else "")
            )
        if self.min is not None and value < self.min:
            raise ConfigError(f"{key_path}: expected a value >= {self.min}, got {value!r}")
        if self.max is not None and value > self.max:
            raise ConfigError(f"{key_path}: expected a value <= {self.max}, got {value!r}")
        return value


def _coerce(value: Any, type_: Any, item: Any, key_path: str, type_name: str) -> Any:
    def fail() -> ConfigError:
        return ConfigError(f"{key_path}: expected {type_name}, got {value!r}")

    if type_ is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if type_ is int:
        if isinstance(value, bool):
            raise fail()
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int):
            if not -INT64_LIMIT <= value < INT64_LIMIT:
                raise ConfigError(f"{key_path}: expected {type_name} of at most 64 bits, got "
                                  f"{value!r}")
            return value
        raise fail()
    if type_ is float:
        if isinstance(value, bool):
            raise fail()
        if isinstance(value, str):
            # YAML 1.1 reads 1e-3 as a string; accept what is plainly a number.
            try:
                value = float(value)
            except ValueError:
                raise fail() from None
        if isinstance(value, (int, float)):
            if not math.isfinite(value):
                raise ConfigError(f"{key_path}: expected a finite {type_name}, got {value!r}")
            return float(value)
        raise fail()
    if type_ is str or type_ == "path":
        if isinstance(value, str):
            return value
        if type_ == "path" and isinstance(value, Path):
            return str(value)
        raise fail()
    if type_ is list:
        if not isinstance(value, (list, tuple)):
            raise fail()
        if item is None:
            return list(value)
        return [_coerce(v, item, None, f"{key_path}[{i}]", _TYPE_NAMES.get(item, str(item)))
                for i, v in enumerate(value)]
    if type_ is dict:
        if isinstance(value, Mapping):
            return dict(value)
        raise fail()
    raise ConfigError(f"{key_path}: parameter declares an unsupported type {type_!r}")


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``name``, when one is close enough to be a likely typo."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def validate_params(
    params: Sequence[Param],
    values: Mapping[str, Any] | None,
    section: str,
    base_dir: Path | None = None,
    ignore: Iterable[str] = (),
    errors: list[str] | None = None,
) -> dict[str, Any]:
    """Check ``values`` against ``params``; return every parameter with defaults filled in.

    Every problem is found, not only the first: they are appended to ``errors`` when given,
    otherwise raised together as one ConfigError with a line each.
    """
    found: list[str] = [] if errors is None else errors
    before = len(found)
    values = dict(values or {})
    for key in ignore:
        values.pop(key, None)
    by_name = {p.name: p for p in params}
    for key in values:
        if key not in by_name:
            hint = closest(str(key), by_name)
            known = ", ".join(sorted(by_name)) or "none"
            found.append((f"{section}.{key}" if section else str(key)) + ": unknown key"
                         + (f"; did you mean {hint!r}?" if hint else f" (accepted: {known})"))
    resolved: dict[str, Any] = {}
    for p in params:
        key_path = f"{section}.{p.name}" if section else p.name
        if p.name in values:
            try:
                resolved[p.name] = p.validate(values[p.name], key_path, base_dir)
            except ConfigError as exc:
                found.append(str(exc))
        elif p.required:
            found.append(f"{key_path}: missing required value ({p.help or p.type_name()})")
        else:
            resolved[p.name] = p.default
    if errors is None and len(found) > before:
        raise ConfigError("\n".join(found))
    return resolved


_JSON_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string", "path": "string",
               list: "array", dict: "object"}


def json_schema(param: Param) -> dict[str, Any]:
    """The JSON Schema of one parameter's values (for editors; rqf validates itself)."""
    schema: dict[str, Any] = {"description": param.help} if param.help else {}
    kind = _JSON_TYPES.get(param.type, "string")
    if param.nullable or (param.default is None and not param.required):
        schema["type"] = [kind, "null"]
    else:
        schema["type"] = kind
    if param.type is list and param.item is not None:
        schema["items"] = {"type": _JSON_TYPES.get(param.item, "string")}
    if param.choices is not None:
        schema["enum"] = list(param.choices) + ([None] if param.nullable else [])
    if param.min is not None:
        schema["minimum"] = param.min
    if param.max is not None:
        schema["maximum"] = param.max
    if not param.required:
        schema["default"] = param.default
    return schema


def object_schema(params: Sequence[Param], extra: Mapping[str, Any] | None = None,
                  required: Sequence[str] = ()) -> dict[str, Any]:
    """A closed JSON Schema object of ``params`` (plus ``extra`` properties)."""
    props = {**(extra or {}), **{p.name: json_schema(p) for p in params}}
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    need = [*required, *(p.name for p in params if p.required)]
    if need:
        out["required"] = need
    return out
