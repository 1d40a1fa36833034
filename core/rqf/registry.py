"""Components by kind and name, with the plugin that registered each one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from rqf.errors import ConfigError, PluginError
from rqf.interfaces import Component, Dataset, Model, Splitter, Storage
from rqf.params import closest
from rqf.tracking import Tracker

KINDS: dict[str, type[Component]] = {
    "storage": Storage,
    "dataset": Dataset,
    "splitter": Splitter,
    "model": Model,
    "tracker": Tracker,
}


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    cls: type[Component]
    plugin: str


class Registry:
    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        # a name two plugins register is nobody's: (kind, name) -> the plugins that claimed it
        self.clashes: dict[tuple[str, str], list[str]] = {}

    def add(self, kind: str, cls: type[Component], plugin: str) -> None:
        base = KINDS[kind]
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(f"plugin {plugin!r} registered {cls!r} as a {kind}, "
                              f"but it is not a subclass of rqf.{base.__name__}")
        if not cls.name:
            raise PluginError(f"plugin {plugin!r} registered {cls.__name__} as a {kind} "
                              "without a 'name'")
        clash = self.clashes.get((kind, cls.name))
        if clash is not None:
            clash.append(plugin)
            return
        existing = self._entries[kind].get(cls.name)
        if existing is not None and existing.cls is not cls:
            # neither wins: which one a pipeline got would depend on the order of installation
            self.clashes[(kind, cls.name)] = [existing.plugin, plugin]
            del self._entries[kind][cls.name]
            return
        self._entries[kind][cls.name] = Entry(kind, cls.name, cls, plugin)

    def get(self, kind: str, name: str, key_path: str | None = None) -> type[Component]:
        entries = self._entries[kind]
        if name in entries:
            return entries[name].cls
        where = f"{key_path}: " if key_path else ""
        if (kind, name) in self.clashes:
            by = " and ".join(repr(p) for p in self.clashes[(kind, name)])
            raise ConfigError(f"{where}{kind} {name!r} is registered by plugins {by}, so it is "
                              "disabled; uninstall one, or leave one out with RQF_LOAD_PLUGINS")
        hint = closest(str(name), entries)
        available = ", ".join(sorted(entries)) or "none installed"
        message = f"{where}unknown {kind} {name!r}"
        if hint:
            message += f"; did you mean {hint!r}?"
        raise ConfigError(f"{message} (available: {available})")

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def entries(self, kind: str | None = None) -> Iterator[Entry]:
        for k in ([kind] if kind else KINDS):
            yield from (self._entries[k][n] for n in sorted(self._entries[k]))
