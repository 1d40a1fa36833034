"""The ``train`` section of a pipeline: its parameters, declared once, and ``TrainConfig``.

Imports no torch, so validating a pipeline stays light.
"""

from __future__ import annotations

from dataclasses import field, make_dataclass
from typing import Any, Mapping

from rqf.params import Param, validate_params

TRAIN_PARAMS = (
    Param("epochs", int, 10, "passes over the training data (null: max_steps decides); a "
          "model may set its own budget, used when neither epochs nor max_steps is given",
          nullable=True, min=0),
    Param("max_steps", int, None, "stop after this many steps (null: epochs decide)",
          nullable=True, min=1),
    Param("batch_size", int, 1024, "samples per step and process", min=1),
    Param("lr", float, 1e-3, "peak learning rate", min=0),
    Param("weight_decay", float, 0.0, "AdamW weight decay", min=0),
    Param("optimizer", str, "adamw", "optimizer", choices=("adamw", "adam", "sgd")),
    Param("scheduler", str, "cosine", "learning-rate schedule after warm-up: cosine (to 5%), "
          "linear (to 0), inverse_sqrt (lr * sqrt(warmup / step)) or constant",
          choices=("cosine", "linear", "inverse_sqrt", "constant")),
    Param("warmup_steps", int, 0, "linear warm-up steps", min=0),
    Param("device", str, "auto", "auto picks CUDA when available", choices=("auto", "cpu", "cuda")),
    Param("precision", str, "fp32", "autocast precision; fp16 adds gradient scaling",
          choices=("fp32", "bf16", "fp16")),
    Param("grad_clip", float, 1.0, "clip the gradient norm to this (null: no clipping)",
          nullable=True, min=0),
    Param("checkpoint_every", int, 1000, "save a checkpoint every N steps (0: only by time "
          "and at the end)", min=0),
    Param("checkpoint_minutes", float, 5.0, "also save a checkpoint when this many minutes "
          "passed since the last one (0: never by time)", min=0),
    Param("keep_checkpoints", int, 2, "how many step checkpoints to keep", min=1),
    Param("eval_every", int, 0, "validate every N steps (0: at the end of each epoch)", min=0),
    Param("monitor", str, None, "a validation metric (e.g. valid_recall@10) whose best value "
          "picks the weights a run keeps (checkpoints/best.pt); null: the last weights",
          nullable=True),
    Param("monitor_mode", str, "max", "whether a higher or lower monitor value is better",
          choices=("max", "min")),
    Param("accumulate", int, 1, "batches whose gradients are summed into one optimizer step "
          "(an effective batch of accumulate x batch_size per process)", min=1),
    Param("log_every", int, 50, "steps between loss read-outs (each one syncs the device)", min=1),
    Param("num_workers", int, 0, "DataLoader worker processes of a model that streams its "
          "samples (rqf.LoaderBatches); models that train from one tensor in memory (rqvae, "
          "tiger) start none", min=0),
    Param("progress", bool, True, "show a progress bar with the live loss"),
    Param("trackers", list, [], "where the run also reports as it goes: tensorboard, mlflow, "
          "wandb or a plugin's tracker, by name or as {type: name, ...its parameters}"),
    Param("threads", int, None, "CPU threads of torch (null: the cores that other running "
          "processes leave, every core on an idle machine; rqf --threads N overrides)",
          nullable=True, min=1),
    Param("compile", bool, None, "torch.compile the model (null: only on CUDA)", nullable=True),
)


def _from_mapping(cls, values: Mapping[str, Any] | None) -> "TrainConfig":
    return cls(**validate_params(TRAIN_PARAMS, values, "train"))


# the train section as attributes; its fields and defaults are TRAIN_PARAMS, declared once
TrainConfig = make_dataclass(
    "TrainConfig", [(p.name, Any, field(default_factory=lambda d=p.default: list(d))
                     if isinstance(p.default, list) else field(default=p.default))
                    for p in TRAIN_PARAMS],
    namespace={"from_mapping": classmethod(_from_mapping),
               "__doc__": "The validated train section of a pipeline (see TRAIN_PARAMS)."})
