"""The training loop shared by torch models.

Device and precision selection, seeded batch order, gradient clipping, a progress bar with
live loss, periodic validation, atomic checkpoints with resume, and DistributedDataParallel
when started under ``torchrun``. Models supply a module, a batch source and a loss function.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import random
import re
import time
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol

import numpy as np
import torch
import torch.distributed as dist

from rqf.errors import RqfError
from rqf.io import atomic_path
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
    Param("checkpoint_every", int, 1000, "save a checkpoint every N steps, and at least once "
          "per tenth of the run (0: only by time and at the end)", min=0),
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
    Param("compile", bool, None, "torch.compile the model (null: only on CUDA)", nullable=True),
)


def _from_mapping(cls, values: Mapping[str, Any] | None) -> "TrainConfig":
    return cls(**validate_params(TRAIN_PARAMS, values, "train"))


# the train section as attributes; its fields and defaults are TRAIN_PARAMS, declared once
TrainConfig = make_dataclass(
    "TrainConfig", [(p.name, Any, field(default=p.default)) for p in TRAIN_PARAMS],
    namespace={"from_mapping": classmethod(_from_mapping),
               "__doc__": "The validated train section of a pipeline (see TRAIN_PARAMS)."})


# --- distributed -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when started by ``torchrun``; a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = resolve_device(device).type == "cuda"
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local_rank)


def dist_info() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(),
                        int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def resolve_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RqfError("train.device: 'cuda' was asked for, but no CUDA device is available")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# --- batch sources ---------------------------------------------------------------------------


def batch_bounds(n: int, batch_size: int, drop_last: bool = False) -> np.ndarray:
    """Start/stop offsets of the batches of ``n`` samples: every sample in near-equal batches
    of at most ``batch_size`` (1,650 at 1,024 make two of 825), or only full batches."""
    count = n // batch_size if drop_last else math.ceil(n / batch_size)
    used = count * batch_size if drop_last else n
    return np.linspace(0, used, count + 1).round().astype(np.int64)


class TensorBatches:
    """Batches drawn from one tensor by a seeded permutation per epoch.

    An epoch covers every sample of the process's share: its batches are of nearly equal size,
    at most ``batch_size`` (1,650 samples at batch size 1,024 make two batches of 825, not one
    of 1,024 with the rest dropped). ``drop_last`` keeps only full batches instead.
    On CUDA with the tensor already on the device, indexing happens there and no host
    synchronisation is needed. A CPU tensor feeding a CUDA device is gathered into pinned
    memory and copied asynchronously one batch ahead. Under DDP each rank takes an equal,
    disjoint share of every epoch's permutation.
    """

    def __init__(self, data: torch.Tensor, batch_size: int, seed: int = 0, shuffle: bool = True,
                 device: torch.device | None = None, drop_last: bool = False,
                 info: DistInfo | None = None) -> None:
        self.data = data
        self.device = device or data.device
        self.seed = seed
        self.shuffle = shuffle
        self.info = info or dist_info()
        self.per_rank = len(data) // self.info.world_size
        if self.per_rank == 0:
            raise RqfError(f"{len(data)} training samples cannot be shared by "
                           f"{self.info.world_size} processes")
        self.batch_size = min(batch_size, self.per_rank)
        self._bounds = batch_bounds(self.per_rank, self.batch_size, drop_last)

    def __len__(self) -> int:
        return len(self._bounds) - 1

    def _order(self, epoch: int) -> torch.Tensor:
        n = len(self.data)
        on = self.data.device
        if not self.shuffle:
            order = torch.arange(n, device=on)
        else:
            g = torch.Generator(device=on)
            g.manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(n, generator=g, device=on)
        start = self.info.rank * self.per_rank
        return order[start:start + self.per_rank]

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[torch.Tensor]:
        order = self._order(epoch)
        bounds = [(int(self._bounds[i]), int(self._bounds[i + 1])) for i in range(skip, len(self))]
        if self.data.device == self.device:
            for a, b in bounds:
                yield self.data[order[a:b]]
            return
        pin = self.device.type == "cuda"
        pending = None
        for a, b in bounds:
            batch = self.data[order[a:b]]
            if pin:
                batch = batch.pin_memory()
            nxt = batch.to(self.device, non_blocking=pin)
            if pending is not None:
                yield pending
            pending = nxt
        if pending is not None:
            yield pending


class BatchSource(Protocol):
    """What ``Trainer.fit`` draws batches from: a fixed number of batches per epoch, and each
    epoch's batches in an order fixed by the epoch number, so ``skip`` resumes exactly."""

    def __len__(self) -> int: ...

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Any]:
        """The batches of ``epoch`` after the first ``skip``, on the training device."""


def to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """``batch`` (tensors, or mappings / lists / tuples of them) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, non_blocking) for v in batch)
    return batch


class LoaderBatches:
    """Batches of a map-style dataset read by a torch ``DataLoader``.

    For data that is read per sample (from a file, in worker processes) rather than held in
    one tensor. The order is a ``DistributedSampler`` permutation seeded by ``seed`` and the
    epoch, so every rank takes its own disjoint share under ``torchrun`` and a resumed run
    sees the same batches (the skipped ones are never read). ``num_workers`` worker processes
    read ahead (the storage reopens its files in each); ``collate`` makes a batch of samples
    (torch's default collation when None). Batches are near-equal in size unless
    ``drop_last``, as with ``TensorBatches``.
    """

    def __init__(self, dataset: Any, batch_size: int, seed: int = 0, shuffle: bool = True,
                 num_workers: int = 0, collate: Callable[[list[Any]], Any] | None = None,
                 device: torch.device | None = None, drop_last: bool = False,
                 info: DistInfo | None = None) -> None:
        from torch.utils.data import DistributedSampler

        self.dataset = dataset
        self.info = info or dist_info()
        if len(dataset) < self.info.world_size:
            raise RqfError(f"{len(dataset)} training samples cannot be shared by "
                           f"{self.info.world_size} processes")
        self.sampler = DistributedSampler(dataset, num_replicas=self.info.world_size,
                                          rank=self.info.rank, shuffle=shuffle, seed=seed,
                                          drop_last=True)
        self.per_rank = self.sampler.num_samples
        self.batch_size = min(batch_size, self.per_rank)
        self.num_workers = num_workers
        self.collate = collate
        self.device = device or torch.device("cpu")
        self._bounds = batch_bounds(self.per_rank, self.batch_size, drop_last)

    def __len__(self) -> int:
        return len(self._bounds) - 1

    def batch_indices(self, epoch: int) -> list[list[int]]:
        """The sample indices of each of this rank's batches in ``epoch``."""
        self.sampler.set_epoch(epoch)
        order = list(self.sampler)
        return [order[self._bounds[i]:self._bounds[i + 1]] for i in range(len(self))]

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Any]:
        from torch.utils.data import DataLoader

        batches = self.batch_indices(epoch)[skip:]
        if not batches:
            return
        pin = self.device.type == "cuda"
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                            collate_fn=self.collate, pin_memory=pin)
        for batch in loader:
            yield to_device(batch, self.device, non_blocking=pin)


class TrainingTask:
    """A model's side of the training seam: the module, a step, and optional hooks.

    ``Trainer.fit_task(task, batches)`` calls ``training_step`` for every batch, averages
    gradients over ``train.accumulate`` batches per optimizer step, calls ``after_step``
    after each step and ``validation_metrics`` every ``eval_every`` steps (when a subclass
    defines it); ``param_groups`` may give parts of the module their own optimizer settings
    (e.g. no weight decay on embeddings).
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def training_step(self, module: torch.nn.Module, batch: Any
                      ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The loss of ``batch`` (through ``module``, which may be wrapped by DDP or compile)
        and values to show beside it."""
        raise NotImplementedError

    def validation_metrics(self, module: torch.nn.Module) -> dict[str, float]:
        """Metrics on the validation split, named as ``train.monitor`` refers to them."""
        raise NotImplementedError

    def param_groups(self) -> list[dict[str, Any]] | None:
        """Optimizer parameter groups (torch's format); None: one group of every parameter."""
        return None

    def after_step(self, step: int) -> None:
        """Called after each optimizer step (e.g. to restart dead codes)."""


# --- checkpoints -----------------------------------------------------------------------------

CHECKPOINT_FORMAT = "rqf-checkpoint-1"
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: Mapping[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(dict(payload), tmp)


def load_tensors(path: Path, what: str, file_format: str | None = None,
                 map_location: Any = "cpu") -> Any:
    """``torch.load`` restricted to tensors and plain data, with one-line errors.

    A file that holds other Python objects is refused without loading them (unpickling can run
    code), and without torch's advice to load it unrestricted. With ``file_format``, the file
    must be a mapping whose ``format`` is that.
    """
    payload = _load_tensors(path, what, map_location)
    if file_format is not None and (not isinstance(payload, dict)
                                    or payload.get("format") != file_format):
        raise RqfError(f"{path}: not a {what} file (expected format {file_format!r})")
    return payload


def _load_tensors(path: Path, what: str, map_location: Any) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise RqfError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise RqfError(f"{path}: expected a {what} file, found a directory") from None
    except Exception as exc:
        text = str(exc)
        if isinstance(exc, pickle.UnpicklingError) and ("GLOBAL" in text or "global" in text):
            raise RqfError(f"{path}: refused: it holds Python objects other than tensors and "
                           f"plain data, which rqf never writes; loading them could run "
                           "code") from None
        # torch's own text advises loading the file unrestricted: never repeat that
        detail = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
        first = detail.group(1) if detail else (
            "" if isinstance(exc, pickle.UnpicklingError) or "weights_only" in text
            else text.splitlines()[0][:160] if text else "")
        raise RqfError(f"{path}: not a readable {what}, corrupted or truncated "
                       f"({type(exc).__name__}{': ' + first if first else ''})") from None


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by rqf; a clear error for anything else."""
    return load_tensors(path, "rqf checkpoint", CHECKPOINT_FORMAT, map_location)


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _STEP_FILE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


class BestWeights:
    """The weights with the best ``monitor`` value seen at validation, kept in memory and in
    ``checkpoints/best.pt`` (so a resumed run still knows them), restored at the end."""

    def __init__(self, monitor: str | None, mode: str, directory: Path | None, is_main: bool,
                 resume: bool = False) -> None:
        self.monitor, self.mode, self.is_main = monitor, mode, is_main
        self.path = directory / "best.pt" if directory else None
        self.step: int | None = None
        self.value: float | None = None
        self.state: dict[str, torch.Tensor] | None = None
        if monitor and resume and self.path is not None and self.path.exists():
            payload = load_checkpoint(self.path)
            if payload.get("monitor") == monitor:
                self.step, self.value = int(payload["step"]), float(payload["value"])
                self.state = payload["model"]

    def offer(self, record: Mapping[str, Any], module: torch.nn.Module) -> None:
        if not self.monitor:
            return
        if self.monitor not in record:
            known = ", ".join(k for k in record if k != "step") or "none"
            raise RqfError(f"train.monitor: {self.monitor!r} is not a validation metric of this "
                           f"model (it reports: {known})")
        value = float(record[self.monitor])
        better = self.value is None or (value > self.value if self.mode == "max"
                                        else value < self.value)
        if not better or not math.isfinite(value):
            return
        self.step, self.value = int(record["step"]), value
        self.state = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
        if self.is_main and self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(self.path, {"format": CHECKPOINT_FORMAT, "step": self.step,
                                        "monitor": self.monitor, "value": value,
                                        "model": self.state})

    def restore(self, module: torch.nn.Module) -> bool:
        if self.state is None:
            return False
        module.load_state_dict(self.state)
        return True


# --- the loop --------------------------------------------------------------------------------

LossFn = Callable[[torch.nn.Module, Any], "tuple[torch.Tensor, dict[str, torch.Tensor]]"]


@dataclass
class FitResult:
    steps: int
    epochs_completed: int
    seconds: float
    samples: int
    resumed_from: int | None
    history: list[dict[str, Any]] = field(default_factory=list)
    best_step: int | None = None     # with train.monitor: the step whose weights were kept
    best_value: float | None = None

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


class Trainer:
    """Runs the optimisation of one module; rank 0 alone writes checkpoints."""

    def __init__(self, cfg: TrainConfig, run_dir: Path | None, seed: int = 0,
                 resume: bool = False, echo: Callable[[str], None] = print,
                 checkpoint_extra: Mapping[str, Any] | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir else None
        self.seed = seed
        self.resume = resume
        self.echo = echo
        self.info = dist_info()
        self.device = resolve_device(cfg.device)
        self.checkpoint_extra = dict(checkpoint_extra or {})
        if cfg.precision == "bf16" and self.device.type == "cuda" \
                and not torch.cuda.is_bf16_supported():
            raise RqfError("train.precision: this GPU does not support bf16; use fp16 or fp32")

    @property
    def checkpoint_dir(self) -> Path | None:
        return self.run_dir / "checkpoints" if self.run_dir else None

    def _optimizer(self, module: torch.nn.Module,
                   groups: list[dict[str, Any]] | None = None) -> torch.optim.Optimizer:
        cfg = self.cfg
        params: Any = groups if groups else [p for p in module.parameters() if p.requires_grad]
        fused = {"fused": True} if self.device.type == "cuda" else {}
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
        if cfg.optimizer == "adam":
            return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)

    def _scheduler(self, optimizer: torch.optim.Optimizer, total: int):
        warmup, kind = self.cfg.warmup_steps, self.cfg.scheduler

        def factor(step: int) -> float:
            if warmup and step < warmup:
                return (step + 1) / warmup
            if kind == "constant":
                return 1.0
            if kind == "inverse_sqrt":
                return math.sqrt(max(1, warmup) / (step + 1))
            if total <= warmup:
                return 1.0
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            if kind == "linear":
                return max(0.0, 1.0 - progress)
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def total_steps(self, batches_per_epoch: int) -> int:
        if self.cfg.epochs is None:
            if not self.cfg.max_steps:
                raise RqfError("train: set epochs or max_steps (both are null)")
            return self.cfg.max_steps
        total = self.cfg.epochs * batches_per_epoch
        return min(total, self.cfg.max_steps) if self.cfg.max_steps else total

    @property
    def resume_checkpoint(self) -> Path | None:
        """The checkpoint ``fit`` will continue from (None: it starts at step 0).

        A model skips its data-dependent initialisation when this is set: the checkpoint
        holds the initialised weights.
        """
        return self._latest_checkpoint() if self.resume else None

    def _due_for_checkpoint(self, step: int, total: int, last_save: float) -> bool:
        cfg = self.cfg
        if step == total:
            return True
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            return True
        if cfg.checkpoint_every and step % max(1, math.ceil(total / 10)) == 0:
            return True  # a killed short run still resumes from near where it was
        return bool(cfg.checkpoint_minutes) and \
            time.monotonic() - last_save >= cfg.checkpoint_minutes * 60

    def fit_task(self, task: "TrainingTask", batches: BatchSource) -> FitResult:
        """Train ``task.module`` through the task's hooks (see ``TrainingTask``)."""
        validates = type(task).validation_metrics is not TrainingTask.validation_metrics
        return self.fit(task.module, batches, task.training_step,
                        task.validation_metrics if validates else None, task.after_step,
                        param_groups=task.param_groups())

    def fit(self, module: torch.nn.Module, batches: BatchSource, loss_fn: LossFn,
            valid_fn: Callable[[torch.nn.Module], dict[str, float]] | None = None,
            after_step: Callable[[int], None] | None = None,
            param_groups: list[dict[str, Any]] | None = None) -> FitResult:
        """Optimise ``module`` on ``batches``; ``loss_fn(module, batch) -> (loss, logs)``.

        One step is one optimizer update over ``train.accumulate`` batches; ``epochs``,
        ``max_steps``, checkpoints and resume all count such steps.
        """
        cfg, device = self.cfg, self.device
        module.to(device)
        optimizer = self._optimizer(module, param_groups)
        n_batches, accumulate = len(batches), cfg.accumulate
        per_epoch = math.ceil(n_batches / accumulate)
        total = self.total_steps(per_epoch)
        scheduler = self._scheduler(optimizer, total)
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        step, resumed_from, history = 0, None, []

        if self.resume:
            self._remove_stale_temporaries()
            latest = self._latest_checkpoint()
            if latest is None:
                self.echo(f"--resume: no checkpoint in {self.checkpoint_dir}; training starts "
                          "from step 0")
            else:
                payload = load_checkpoint(latest, map_location=device)
                self._check_extra(payload, latest)
                try:
                    module.load_state_dict(payload["model"])
                except RuntimeError as exc:
                    raise RqfError(f"{latest}: checkpoint does not fit this model "
                                   f"({str(exc).splitlines()[0]})") from None
                optimizer.load_state_dict(payload["optimizer"])
                scheduler.load_state_dict(payload["scheduler"])
                scaler.load_state_dict(payload["scaler"])
                _set_rng_state(payload["rng"])
                step = resumed_from = int(payload["step"])
                history = list(json.loads(payload.get("history", "[]")))
                self.echo(f"resuming from {latest.name} (step {step} of {total})")

        train_module: torch.nn.Module = module
        ddp: Any = None
        if self.info.enabled:
            train_module = ddp = torch.nn.parallel.DistributedDataParallel(
                module, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.compile if cfg.compile is not None else device.type == "cuda":
            train_module = torch.compile(train_module)

        best = BestWeights(cfg.monitor, cfg.monitor_mode, self.checkpoint_dir,
                           self.info.is_main, resume=self.resume and resumed_from is not None)
        bar = _progress(total, step, enabled=cfg.progress and self.info.is_main)
        running = torch.zeros((), device=device)
        running_n, samples, start = 0, 0, time.perf_counter()
        last_save = time.monotonic()
        last_logs: dict[str, float] = {}
        module.train()
        try:
            while step < total:
                epoch, skip = divmod(step, per_epoch)
                first = skip * accumulate
                optimizer.zero_grad(set_to_none=True)
                for i, batch in enumerate(batches.epoch(epoch, skip=first), start=first):
                    group = min(accumulate, n_batches - i // accumulate * accumulate)
                    last = i % accumulate == group - 1
                    # gradients of a group's earlier batches stay local under DDP
                    sync = ddp.no_sync() if ddp is not None and not last \
                        else contextlib.nullcontext()
                    with sync:
                        with autocast(device, cfg.precision):
                            loss, logs = loss_fn(train_module, batch)
                        scaler.scale(loss / group if group > 1 else loss).backward()
                    samples += _batch_len(batch)
                    running += loss.detach().float()
                    running_n += 1
                    if not last:
                        continue
                    if cfg.grad_clip:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    if after_step is not None:
                        after_step(step)
                    if step % cfg.log_every == 0 or step == total:
                        mean = (running / running_n).item()  # the one sync per log interval
                        if not math.isfinite(mean):
                            raise RqfError(f"training diverged: loss is {mean} at step {step} "
                                           "(try train.precision=fp32 or a lower train.lr)")
                        last_logs = {"loss": mean, **{k: float(v) for k, v in logs.items()}}
                        bar.set_postfix({k: f"{v:.4g}" for k, v in last_logs.items()}, refresh=False)
                        running.zero_()
                        running_n = 0
                    bar.update(1)
                    end_of_epoch = step % per_epoch == 0
                    if valid_fn is not None and (
                            (cfg.eval_every and step % cfg.eval_every == 0)
                            or (not cfg.eval_every and end_of_epoch) or step == total):
                        module.eval()
                        with torch.no_grad():
                            record = {"step": step, **valid_fn(module)}
                        module.train()
                        history.append(record)
                        best.offer(record, module)
                    if self._due_for_checkpoint(step, total, last_save):
                        self._save(step, module, optimizer, scheduler, scaler, history)
                        last_save = time.monotonic()
                    if step >= total:
                        break
        finally:
            bar.close()
        seconds = time.perf_counter() - start
        if best.restore(module):
            self.echo(f"kept the weights of step {best.step}: {cfg.monitor} = {best.value:.4g} "
                      f"({'highest' if cfg.monitor_mode == 'max' else 'lowest'} on validation)")
        return FitResult(step, step // per_epoch if per_epoch else 0, seconds, samples,
                         resumed_from, history, best.step, best.value)

    def _remove_stale_temporaries(self) -> None:
        # a kill during a checkpoint write leaves the temporary file atomic_path made
        if self.info.is_main and self.checkpoint_dir and self.checkpoint_dir.is_dir():
            for tmp in self.checkpoint_dir.glob(".step_*.pt.*.tmp"):
                tmp.unlink(missing_ok=True)

    def _latest_checkpoint(self) -> Path | None:
        found = list_checkpoints(self.checkpoint_dir) if self.checkpoint_dir else []
        return found[-1][1] if found else None

    def _check_extra(self, payload: Mapping[str, Any], path: Path) -> None:
        saved = payload.get("extra", {})
        for key, value in self.checkpoint_extra.items():
            if key in saved and saved[key] != value:
                raise RqfError(f"{path}: checkpoint was made with {key}={saved[key]!r}, "
                               f"this run has {key}={value!r}")

    def _save(self, step, module, optimizer, scheduler, scaler, history) -> None:
        if not self.info.is_main or self.checkpoint_dir is None:
            return
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        save_checkpoint(self.checkpoint_dir / f"step_{step:08d}.pt", {
            "format": CHECKPOINT_FORMAT, "step": step, "model": module.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "rng": _rng_state(), "extra": self.checkpoint_extra,
            "history": json.dumps(history),
        })
        for _, old in list_checkpoints(self.checkpoint_dir)[:-self.cfg.keep_checkpoints]:
            old.unlink(missing_ok=True)


def _batch_len(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, Mapping):
        return _batch_len(next(iter(batch.values())))
    if isinstance(batch, (list, tuple)):
        return _batch_len(batch[0])
    return 0


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step",
                dynamic_ncols=True, mininterval=0.5, leave=False)
