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


# names whose modules import torch: loaded on first use, so `import rqf` stays light
_LAZY = {"atomic_path": "rqf.io", "atomic_h5": "rqf.io", "write_json_atomic": "rqf.io",
         "load_tensors": "rqf.training", "Trainer": "rqf.training",
         "TensorBatches": "rqf.training", "TrainConfig": "rqf.training",
         "autocast": "rqf.training"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rqf' has no attribute {name!r}")


__all__ = ["ConfigError", "DataError", "Dataset", "InspectReport", "ItemVectors", "Model",
           "Param", "PluginError", "RqfError", "RunContext", "SequenceVectors", "Splitter",
           "Storage", "TensorBatches", "TrainConfig", "Trainer", "atomic_h5", "atomic_path", "hookimpl", "autocast", "load_tensors", "run",
           "write_json_atomic", "__version__"]
