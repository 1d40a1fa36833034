"""The training loop shared by torch models.

Device and precision selection, seeded batch order, gradient clipping, a progress bar with
live loss, periodic validation, atomic checkpoints with resume, and DistributedDataParallel
when started under ``torchrun``. Models supply a module, a batch source and a loss function.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from rqf.errors import RqfError
from rqf.training.batches import BatchSource
from rqf.training.checkpoints import (CHECKPOINT_FORMAT, BestWeights, _rng_state, _set_rng_state,
                                      list_checkpoints, load_checkpoint, save_checkpoint)
from rqf.training.config import TrainConfig
from rqf.training.runtime import autocast, dist_info, resolve_device


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
