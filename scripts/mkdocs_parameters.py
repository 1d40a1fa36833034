"""MkDocs hook: a page's ``<!-- parameters: KIND NAME -->`` becomes the table of that installed
component's parameters (name, type, default, what it does), read from the registry, so the
docs list exactly what ``rqf validate`` accepts."""

from __future__ import annotations

import re

MARKER = re.compile(r"<!-- parameters: (\w+) (\w+) -->")


def _table(kind: str, name: str) -> str:
    from rqf.plugins import get_plugins

    entry = next((e for e in get_plugins().registry.entries(kind) if e.name == name), None)
    if entry is None:
        raise ValueError(f"docs: no installed {kind} named {name!r}")
    params = entry.cls.params
    if not params:
        return "_No parameters._"
    rows = ["| key | type | default | what it does |", "| --- | --- | --- | --- |"]
    for p in params:
        kind_name = p.type_name()
        default = "(required)" if p.required else f"`{p.default!r}`"
        text = (p.help or "").replace("|", "\\|")
        rows.append(f"| `{p.name}` | {kind_name} | {default} | {text} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, **_kwargs) -> str:
    return MARKER.sub(lambda m: _table(m.group(1), m.group(2)), markdown)
