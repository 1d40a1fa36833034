"""rqf: residual-quantized autoencoders over HDF5 embeddings, built from plugins."""

from rqf.builtin import IndexSplitter, check_disjoint
from rqf.data import (ArrayGroup, ItemRows, ItemSource, KeyedArrays, SequenceRecords,
                      SequenceSource, SequenceTable, SequenceView, all_items, flatten_rows,
                      input_positions, missing_members, positions, read_rows, require, rows_of)
from rqf.errors import ConfigError, DataError, PluginError, RqfError
from rqf.hookspecs import hookimpl
from rqf.interfaces import (Dataset, InspectReport, ItemVectors, Model, RunContext,
                            SequenceVectors, Splitter, Storage)
from rqf.params import Param, validate_params

__version__ = "0.1.0"


def run(config, overrides=(), force=False, resume=False, echo=None):
    """Run a pipeline (a YAML path or a mapping); see ``rqf.pipeline.run``."""
    from rqf.pipeline import run as _run

    return _run(config, overrides=overrides, force=force, resume=resume, echo=echo)


# names whose modules import torch: loaded on first use, so `import rqf` stays light
_LAZY = {"atomic_path": "rqf.io", "atomic_h5": "rqf.io", "write_json_atomic": "rqf.io",
         "write_text_atomic": "rqf.io", "FolderLock": "rqf.io", "disk_full": "rqf.io",
         "is_disk_full": "rqf.io",
         "load_tensors": "rqf.training", "Trainer": "rqf.training",
         "TensorBatches": "rqf.training", "LoaderBatches": "rqf.training",
         "BatchSource": "rqf.training", "TrainingTask": "rqf.training",
         "to_device": "rqf.training",
         "TrainConfig": "rqf.training", "autocast": "rqf.training",
         "resolve_device": "rqf.training"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rqf' has no attribute {name!r}")


# the public API: plugins import these (and rqf.codes; rqf.testing in their tests)
__all__ = sorted([
    "ArrayGroup", "ConfigError", "DataError", "Dataset", "IndexSplitter", "InspectReport",
    "ItemRows", "ItemSource", "ItemVectors", "KeyedArrays", "Model", "Param", "PluginError",
    "RqfError", "RunContext", "SequenceRecords", "SequenceSource", "SequenceTable",
    "SequenceVectors", "SequenceView", "Splitter", "Storage", "all_items", "check_disjoint",
    "encode", "flatten_rows", "hookimpl", "input_positions", "missing_members", "positions",
    "read_rows", "require", "rows_of", "run", "validate_params", *_LAZY, "__version__"])


def encode(run_dir, out, overrides=(), device="auto"):
    """Encode the data of a finished run's pipeline (after ``overrides``) with its model into
    ``out``; the Python twin of ``rqf encode``."""
    from rqf.pipeline import encode as _encode

    return _encode(run_dir, out, overrides=overrides, device=device)
