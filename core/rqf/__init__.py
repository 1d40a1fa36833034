"""rqf: residual-quantized autoencoders over HDF5 embeddings, built from plugins."""

from rqf.builtin import IndexSplitter, check_disjoint
from rqf.data import (ArrayGroup, ItemRows, ItemSource, KeyedArrays, SequenceRecords,
                      SequenceSource, SequenceTable, SequenceView, all_items, flatten_rows,
                      input_positions, missing_members, positions, read_rows, require, rows_of)
from rqf.errors import ConfigError, DataError, PluginError, RqfError
from rqf.hookspecs import hookimpl
from rqf.interfaces import (Dataset, InspectReport, ItemVectors, Model, RunContext,
                            SequenceVectors, Splitter, Storage)
from rqf.keys import KEYS_DATASET, ItemKeys, check_keys, decode_keys, read_keys, write_keys
from rqf.memory import require_memory
from rqf.params import Param, validate_params

__version__ = "0.1.0"


def run(config, overrides=(), force=False, resume=False, echo=None):
    """Run a pipeline (a YAML path or a mapping); see ``rqf.pipeline.run``."""
    from rqf.pipeline import run as _run

    return _run(config, overrides=overrides, force=force, resume=resume, echo=echo)


# names whose modules import torch: loaded on first use, so `import rqf` stays light
_LAZY = {
    "atomic_path": "rqf.io", "atomic_h5": "rqf.io", "write_json_atomic": "rqf.io",
    "write_text_atomic": "rqf.io", "FolderLock": "rqf.io", "disk_full": "rqf.io",
    "is_disk_full": "rqf.io", "stored_outside": "rqf.io", "check_output": "rqf.io",
    "Trainer": "rqf.training", "TrainingTask": "rqf.training", "TrainConfig": "rqf.training",
    "FitResult": "rqf.training", "BatchSource": "rqf.training", "TensorBatches": "rqf.training",
    "LoaderBatches": "rqf.training", "to_device": "rqf.training", "autocast": "rqf.training",
    "resolve_device": "rqf.training", "load_tensors": "rqf.training",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rqf' has no attribute {name!r}")


# the public API, grouped by who uses it; plugins import these (and rqf.codes; rqf.testing in
# their tests)
__all__ = [
    # running and reopening pipelines
    "run", "encode", "load", "__version__",
    # components: the four interfaces, what they declare and the errors they raise
    "Storage", "Dataset", "Splitter", "Model", "Param", "validate_params", "RunContext",
    "InspectReport", "ItemVectors", "SequenceVectors", "hookimpl", "IndexSplitter",
    "check_disjoint", "RqfError", "ConfigError", "DataError", "PluginError", "require_memory",
    # data protocols a storage implements, and the helpers recsys datasets share
    "ItemSource", "SequenceSource", "SequenceTable", "SequenceView", "SequenceRecords",
    "KeyedArrays", "ArrayGroup", "ItemRows", "missing_members", "require", "read_rows",
    "rows_of", "flatten_rows", "all_items", "positions", "input_positions",
    # the items' own keys (ASINs) beside their ids
    "ItemKeys", "KEYS_DATASET", "check_keys", "decode_keys", "read_keys", "write_keys",
    # the training seam of torch models
    "Trainer", "TrainingTask", "TrainConfig", "FitResult", "BatchSource", "TensorBatches",
    "LoaderBatches", "to_device", "autocast", "resolve_device", "load_tensors",
    # files that are whole or absent
    "atomic_path", "atomic_h5", "write_json_atomic", "write_text_atomic", "FolderLock",
    "disk_full", "is_disk_full", "stored_outside", "check_output",
]


def load(run_dir, device="auto"):
    """The model of a finished run (``rqf.load(RUN).recommend_histories([[12, 7, 33]], k=10)``
    for a model that ranks items); see ``rqf.pipeline.load``."""
    from rqf.pipeline import load as _load

    return _load(run_dir, device=device)


def encode(run_dir, out, overrides=(), device="auto", force=False):
    """Encode the data of a finished run's pipeline (after ``overrides``) with its model into
    ``out``; the Python twin of ``rqf encode``."""
    from rqf.pipeline import encode as _encode

    return _encode(run_dir, out, overrides=overrides, device=device, force=force)
