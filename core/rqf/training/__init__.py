"""What every torch model's training shares, one idea a file.

``config`` (the train section, torch-free), ``runtime`` (device, distributed, seeding,
autocast), ``batches`` (batch sources), ``checkpoints`` (save, safe load, best weights, the
model file every model writes), ``optim`` (optimizer and learning-rate schedule) and ``loop``
(``TrainingTask``, ``Trainer``, ``FitResult``). Nothing is imported until a name is asked for,
so ``rqf.training.TRAIN_PARAMS`` does not load torch.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "config": ("TRAIN_PARAMS", "TrainConfig"),
    "runtime": ("DistInfo", "init_distributed", "dist_info", "resolve_device", "seed_everything",
                "autocast"),
    "batches": ("batch_bounds", "TensorBatches", "BatchSource", "to_device", "LoaderBatches"),
    "checkpoints": ("CHECKPOINT_FORMAT", "save_checkpoint", "load_tensors", "load_checkpoint",
                    "list_checkpoints", "BestWeights", "save_model_file", "load_model_file"),
    "optim": ("build_optimizer", "build_scheduler", "lr_factor"),
    "loop": ("TrainingTask", "LossFn", "FitResult", "Trainer"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}


def __getattr__(name: str):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f"rqf.training.{_MODULE_OF[name]}"), name)
    raise AttributeError(f"module 'rqf.training' has no attribute {name!r}")


__all__ = sorted(_MODULE_OF)
