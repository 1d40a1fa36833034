"""rqf: residual-quantized autoencoders over HDF5 embeddings, built from plugins."""

from rqf.errors import ConfigError, DataError, PluginError, RqfError
from rqf.hookspecs import hookimpl
from rqf.interfaces import (Dataset, InspectReport, ItemVectors, Model, RunContext,
                            SequenceVectors, Splitter, Storage)
from rqf.params import Param

__version__ = "0.1.0"


def run(config, overrides=(), force=False, resume=False, echo=None):
    """Run a pipeline (a YAML path or a mapping); see ``rqf.pipeline.run``."""
    from rqf.pipeline import run as _run

    return _run(config, overrides=overrides, force=force, resume=resume, echo=echo)


__all__ = ["ConfigError", "DataError", "Dataset", "InspectReport", "ItemVectors", "Model",
           "Param", "PluginError", "RqfError", "RunContext", "SequenceVectors", "Splitter",
           "Storage", "hookimpl", "run", "__version__"]
