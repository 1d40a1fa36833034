"""The plugin manager: loads ``rqf`` entry points one by one and fills the registry.

A plugin that fails to import, or whose hooks raise, is recorded in ``failures`` and the
others keep working. ``RQF_LOAD_PLUGINS`` (comma-separated entry-point names, empty for none)
limits which installed plugins load; the core's own components always do.
"""

from __future__ import annotations

import importlib.metadata as md
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pluggy

from rqf import hookspecs
from rqf.errors import RqfError
from rqf.registry import Registry

ENTRY_POINT_GROUP = "rqf"
_HOOKS = {
    "storage": "register_storages",
    "dataset": "register_datasets",
    "splitter": "register_splitters",
    "model": "register_models",
    "tracker": "register_trackers",
}


@dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    error: str | None = None


class Plugins:
    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("rqf")
        self.pm.add_hookspecs(hookspecs)
        self.registry = Registry()
        self.info: dict[str, PluginInfo] = {}
        self.failures: list[PluginInfo] = []

    def load(self, entry_points: bool = True) -> "Plugins":
        from rqf import builtin

        self.add(builtin, "builtin", "rqf", _version("rqf"))
        if entry_points:
            for ep in _selected_entry_points():
                dist = ep.dist.name if ep.dist else "?"
                version = ep.dist.version if ep.dist else "?"
                if ep.name in self.info:
                    self._fail(PluginInfo(ep.name, dist, version),
                               f"entry point name {ep.name!r} is already taken by "
                               f"{self.info[ep.name].distribution!r}")
                    continue
                try:
                    module = ep.load()
                except Exception as exc:  # a broken plugin must not break the others
                    self._fail(PluginInfo(ep.name, dist, version),
                               f"import of {ep.value!r} failed: {type(exc).__name__}: {exc}")
                    continue
                self.add(module, ep.name, dist, version)
        return self

    def add(self, module: Any, name: str, distribution: str = "?", version: str = "?") -> None:
        """Register a plugin module exactly as an entry point named ``name`` would be."""
        info = PluginInfo(name, distribution, version)
        try:
            self.pm.register(module, name=name)
            self.pm.check_pending()
        except Exception as exc:
            if self.pm.is_registered(module):
                self.pm.unregister(module)
            self._fail(info, f"{type(exc).__name__}: {exc}")
            return
        for kind, hook_name in _HOOKS.items():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                if impl.plugin_name != name:
                    continue
                try:
                    impl.function(register=partial(self.registry.add, kind, plugin=name))
                except Exception as exc:
                    self._fail(info, f"{hook_name} raised {type(exc).__name__}: {exc}")
                    return
        self.info[name] = info

    def _fail(self, info: PluginInfo, error: str) -> None:
        info.error = error
        self.failures.append(info)

    def add_commands(self, cli: Any) -> None:
        for impl in self.pm.hook.register_commands.get_hookimpls():
            try:
                impl.function(cli=cli)
            except Exception as exc:
                known = self.info.get(impl.plugin_name, PluginInfo(impl.plugin_name, "?", "?"))
                self.failures.append(PluginInfo(known.name, known.distribution, known.version,
                                                f"register_commands raised {type(exc).__name__}: {exc}"))

    def clashes(self) -> list[str]:
        """One line per name two installed plugins register (disabled), naming both."""
        lines = []
        for (kind, name), plugins in self.registry.clashes.items():
            who = " and ".join(f"plugin {p!r} ({self._distribution(p)})" for p in plugins)
            lines.append(f"{kind} {name!r} is registered by {who}; it is disabled, the "
                         "rest of both plugins works")
        return lines

    def storage_for(self, path: Path) -> type:
        """The installed storage that recognises the file or folder ``path`` (what ``rqf
        inspect`` hands it to), or a one-line error naming the storages there are."""
        if not Path(path).exists():
            raise RqfError(f"{path}: no such file or directory")
        for entry in self.registry.entries("storage"):
            if entry.cls.recognizes(path):
                return entry.cls
        names = ", ".join(self.registry.names("storage")) or "none installed"
        raise RqfError(f"{path}: no installed storage recognises this file (storages: {names})")

    def _distribution(self, plugin: str) -> str:
        info = self.info.get(plugin)
        return f"{info.distribution} {info.version}" if info else "?"


def _selected_entry_points() -> list[md.EntryPoint]:
    eps = sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)
    wanted = os.environ.get("RQF_LOAD_PLUGINS")
    if wanted is None:
        return list(eps)
    names = {n.strip() for n in wanted.split(",") if n.strip()}
    return [ep for ep in eps if ep.name in names]


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "?"


_plugins: Plugins | None = None


def get_plugins() -> Plugins:
    """The process-wide plugin manager, loaded on first use."""
    global _plugins
    if _plugins is None:
        _plugins = Plugins().load()
    return _plugins


def reset_plugins(plugins: Plugins | None = None) -> None:
    """Replace the process-wide plugin manager (tests, or after installing a plugin)."""
    global _plugins
    _plugins = plugins


def item_ids_of(path: Path) -> np.ndarray:
    """The item ids, in row order, of an item file any installed storage reads on its own."""
    return item_source_of(path)[0]


def item_source_of(path: Path) -> tuple[np.ndarray, list[str] | None]:
    """The item ids, in row order, of an item file any installed storage reads on its own,
    and the items' own keys where it has them."""
    from rqf.data import ItemSource, missing_members

    kind = get_plugins().storage_for(path)
    try:
        storage = kind.for_path(Path(path))
    except NotImplementedError:
        raise RqfError(f"{path}: a {kind.name} file or folder, not an item file (storage "
                       f"{kind.name!r} is not opened from a path alone)") from None
    with storage:
        if missing_members(storage, ItemSource):
            raise RqfError(f"{path}: holds no item ids (storage {storage.name!r} reads it, "
                           "but not as an item file)")
        return np.asarray(storage.item_ids, np.int64), storage.item_keys()
