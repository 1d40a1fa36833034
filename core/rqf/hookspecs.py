"""Extension points. A plugin implements any of these with ``@rqf.hookimpl``."""

import pluggy

hookspec = pluggy.HookspecMarker("rqf")
hookimpl = pluggy.HookimplMarker("rqf")


@hookspec
def register_storages(register):
    """Register Storage subclasses: ``register(MyStorage)``."""


@hookspec
def register_datasets(register):
    """Register Dataset subclasses."""


@hookspec
def register_splitters(register):
    """Register Splitter subclasses."""


@hookspec
def register_models(register):
    """Register Model subclasses."""


@hookspec
def register_trackers(register):
    """Register Tracker subclasses (``rqf.tracking.Tracker``): where runs report as they go."""


@hookspec
def register_commands(cli):
    """Add click commands or groups to the ``rqf`` command line."""


@hookspec
def check_demo_data(directory, force):
    """Raise an ``RqfError`` naming the file when writing this plugin's demo data under
    ``directory`` would replace what it did not write (with ``force``: what may never be
    replaced); called for every plugin before any writes."""


@hookspec
def write_demo_data(directory, seed):
    """Write this plugin's demo data under ``directory``; return {name: path} of what it wrote."""
