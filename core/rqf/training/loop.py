"""The training loop shared by torch models: ``Trainer.fit(task, batches)``.

Device and precision, seeded batch order, gradient accumulation and clipping, a progress bar
with live loss, periodic validation with best-weights tracking, atomic checkpoints with
resume, and DistributedDataParallel when started under ``torchrun``. A model gives a
``TrainingTask`` (its module and a step) and a batch source; the pipeline builds the
``Trainer`` from the run's train section and hands it over (``RunContext.trainer``).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
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
from rqf.training.optim import build_optimizer, build_scheduler
from rqf.training.runtime import autocast, dist_info, resolve_device

LossFn = Callable[[torch.nn.Module, Any], "tuple[torch.Tensor, dict[str, torch.Tensor]]"]


class TrainingTask:
    """A model's side of the training seam: the module, a step, and optional hooks.

    ``Trainer.fit(task, batches)`` calls ``training_step`` for every batch, averages
    gradients over ``train.accumulate`` batches per optimizer step, calls ``after_step``
    after each step and ``validation_metrics`` every ``eval_every`` steps (when a subclass
    defines it); ``param_groups`` may give parts of the module their own optimizer settings
    (e.g. no weight decay on embeddings). ``fingerprint`` holds what a checkpoint must match
    to be resumed by this task (e.g. the architecture, the data it was made for).
    """

    def __init__(self, module: torch.nn.Module,
                 fingerprint: Mapping[str, Any] | None = None) -> None:
        self.module = module
        self.fingerprint = dict(fingerprint or {})

    @property
    def validates(self) -> bool:
        return type(self).validation_metrics is not TrainingTask.validation_metrics

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

    @classmethod
    def of(cls, module: torch.nn.Module, step: LossFn,
           validate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
           after_step: Callable[[int], None] | None = None,
           fingerprint: Mapping[str, Any] | None = None) -> "TrainingTask":
        """A task made of functions: ``step(module, batch) -> (loss, logs)`` and the hooks."""
        return _FunctionTask(module, fingerprint, step, validate, after_step)


class _FunctionTask(TrainingTask):
    def __init__(self, module, fingerprint, step, validate, after_step) -> None:
        super().__init__(module, fingerprint)
        self._step, self._validate, self._after = step, validate, after_step

    @property
    def validates(self) -> bool:
        return self._validate is not None

    def training_step(self, module, batch):
        return self._step(module, batch)

    def validation_metrics(self, module):
        return self._validate(module)

    def after_step(self, step: int) -> None:
        if self._after is not None:
            self._after(step)


@dataclass
class FitResult:
    steps: int
    epochs_completed: int
    seconds: float
    samples: int
    resumed_from: int | None
    history: list[dict[str, Any]] = field(default_factory=list)  # validation metrics by step
    best_step: int | None = None     # with train.monitor: the step whose weights were kept
    best_value: float | None = None
    losses: list[dict[str, Any]] = field(default_factory=list)  # training loss by step

    def curves(self) -> dict[str, list[dict[str, Any]]]:
        """What the report plots: ``losses`` (mean training loss per ``train.log_every``
        steps, with the task's logged terms) and ``history`` (validation metrics)."""
        return {"losses": self.losses, "history": self.history}

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")

    def summary(self, device: Any) -> dict[str, Any]:
        """What a trained model's ``fit`` reports (it adds what is its own): steps, seconds,
        the kept step and its value, where a resume started, the device and the curves."""
        return {"steps": self.steps, "seconds": round(self.seconds, 3),
                "best_step": self.best_step, "best_value": self.best_value,
                "resumed_from": self.resumed_from, "device": str(device), **self.curves()}


@dataclass
class _Progress:
    """What a checkpoint holds beside the module: optimizer, schedule, scaler, step, history."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    step: int = 0
    resumed_from: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    losses: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0  # training seconds before this process took over (a resume)
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        """Seconds of training so far, validations included, across resumes."""
        return self.seconds + time.perf_counter() - self.started

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "history": json.dumps(self.history), "losses": json.dumps(self.losses),
                "seconds": self.elapsed()}

    def load_state_dict(self, payload: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        self.step = self.resumed_from = int(payload["step"])
        self.history = list(json.loads(payload.get("history", "[]")))
        self.losses = list(json.loads(payload.get("losses", "[]")))
        self.seconds, self.started = float(payload.get("seconds", 0.0)), time.perf_counter()


class _LossMeter:
    """The mean loss since the last read-out, summed on the device (one sync per read)."""

    def __init__(self, device: torch.device) -> None:
        self.total = torch.zeros((), device=device)
        self.count = 0

    def add(self, loss: torch.Tensor) -> None:
        self.total += loss.detach().float()
        self.count += 1

    def read(self) -> float:
        mean = (self.total / max(self.count, 1)).item()
        self.total.zero_()
        self.count = 0
        return mean


class Trainer:
    """Runs the optimisation of one task; rank 0 alone writes checkpoints."""

    def __init__(self, cfg: TrainConfig, run_dir: Path | None, seed: int = 0,
                 resume: bool = False, echo: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir else None
        self.seed = seed
        self.resume = resume
        self.echo = echo
        self.info = dist_info()
        self.device = resolve_device(cfg.device)
        # called once the resume state is loaded and checked, before the first step: the
        # pipeline prepares a resumed run folder only then, so a refused resume changes nothing
        self.on_start: Callable[[], None] | None = None
        self.resumed_from: int | None = None  # known once fit has loaded its checkpoint
        self.trackers: Any = None  # rqf.tracking.Trackers: where losses and validations go
        self._latest: dict[str, str] = {}  # the last validation, shown beside the loss
        if cfg.precision == "bf16" and self.device.type == "cuda" \
                and not torch.cuda.is_bf16_supported():
            raise RqfError("train.precision: this GPU does not support bf16; use fp16 or fp32")

    @property
    def checkpoint_dir(self) -> Path | None:
        return self.run_dir / "checkpoints" if self.run_dir else None

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

    def fit(self, task: TrainingTask, batches: BatchSource) -> FitResult:
        """Optimise ``task.module`` on ``batches`` through the task's hooks.

        One step is one optimizer update over ``train.accumulate`` batches; ``epochs``,
        ``max_steps``, checkpoints and resume all count such steps.
        """
        cfg = self.cfg
        module = task.module.to(self.device)
        n_batches = len(batches)
        per_epoch = math.ceil(n_batches / cfg.accumulate)
        total = self.total_steps(per_epoch)
        progress = self._start(task, module, total)
        train_module, ddp = self._wrap(module)
        best = BestWeights(cfg.monitor, cfg.monitor_mode, self.checkpoint_dir,
                           self.info.is_main, resume=progress.resumed_from is not None)
        self.resumed_from = progress.resumed_from
        if self.on_start is not None:
            self.on_start()
        bar = _progress_bar(total, progress.step, enabled=cfg.progress and self.info.is_main)
        meter, samples = _LossMeter(self.device), 0
        start, last_save = time.perf_counter(), time.monotonic()
        module.train()
        try:
            while progress.step < total:
                epoch, skip = divmod(progress.step, per_epoch)
                first = skip * cfg.accumulate
                progress.optimizer.zero_grad(set_to_none=True)
                for i, batch in enumerate(batches.epoch(epoch, skip=first), start=first):
                    group = min(cfg.accumulate, n_batches - i // cfg.accumulate * cfg.accumulate)
                    last = i % cfg.accumulate == group - 1
                    logs = self._backward(task, train_module, ddp, batch, group, last,
                                          progress.scaler, meter)
                    samples += _batch_len(batch)
                    if not last:
                        continue
                    self._optimizer_step(module, progress)
                    task.after_step(progress.step)
                    self._after_step(task, module, progress, total, per_epoch, meter, logs,
                                     bar, best)
                    if self._due_for_checkpoint(progress.step, total, last_save):
                        self._save(module, progress, task.fingerprint)
                        last_save = time.monotonic()
                    if progress.step >= total:
                        break
        finally:
            bar.close()
        seconds = time.perf_counter() - start
        if best.restore(module):
            self.echo(f"kept the weights of step {best.step}: {cfg.monitor} = {best.value:.4g} "
                      f"({'highest' if cfg.monitor_mode == 'max' else 'lowest'} on validation)")
        return FitResult(progress.step, progress.step // per_epoch if per_epoch else 0, seconds,
                         samples, progress.resumed_from, progress.history, best.step, best.value,
                         progress.losses)

    # -- the pieces of a step ---------------------------------------------------------------
    def _start(self, task: TrainingTask, module: torch.nn.Module, total: int) -> _Progress:
        """Optimizer, schedule and scaler, restored from the latest checkpoint on resume."""
        optimizer = build_optimizer(
            self.cfg, task.param_groups() or [p for p in module.parameters() if p.requires_grad],
            self.device)
        progress = _Progress(optimizer, build_scheduler(self.cfg, optimizer, total),
                             torch.amp.GradScaler(self.device.type,
                                                  enabled=self.cfg.precision == "fp16"))
        if not self.resume:
            return progress
        self._remove_stale_temporaries()
        latest = self._latest_checkpoint()
        if latest is None:
            self.echo(f"--resume: no checkpoint in {self.checkpoint_dir}; training starts "
                      "from step 0")
            return progress
        payload = load_checkpoint(latest, map_location=self.device)
        self._check_fingerprint(payload, latest, task.fingerprint)
        try:
            module.load_state_dict(payload["model"])
        except RuntimeError as exc:
            raise RqfError(f"{latest}: checkpoint does not fit this model "
                           f"({str(exc).splitlines()[0]})") from None
        progress.load_state_dict(payload)
        _set_rng_state(payload["rng"])
        self.echo(f"resuming from {latest.name} (step {progress.step} of {total})")
        return progress

    def _wrap(self, module: torch.nn.Module) -> tuple[torch.nn.Module, Any]:
        """The module a step runs through (DDP, compile) and the DDP wrapper, if any."""
        train_module, ddp = module, None
        if self.info.enabled:
            train_module = ddp = torch.nn.parallel.DistributedDataParallel(
                module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.cfg.compile if self.cfg.compile is not None else self.device.type == "cuda":
            train_module = torch.compile(train_module)
        return train_module, ddp

    def _backward(self, task, train_module, ddp, batch, group: int, last: bool, scaler,
                  meter: _LossMeter) -> dict[str, Any]:
        # gradients of a group's earlier batches stay local under DDP
        sync = ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext()
        with sync:
            with autocast(self.device, self.cfg.precision):
                loss, logs = task.training_step(train_module, batch)
            scaler.scale(loss / group if group > 1 else loss).backward()
        meter.add(loss)
        return logs

    def _optimizer_step(self, module: torch.nn.Module, progress: _Progress) -> None:
        if self.cfg.grad_clip:
            progress.scaler.unscale_(progress.optimizer)
            torch.nn.utils.clip_grad_norm_(module.parameters(), self.cfg.grad_clip)
        progress.scaler.step(progress.optimizer)
        progress.scaler.update()
        progress.scheduler.step()
        progress.optimizer.zero_grad(set_to_none=True)
        progress.step += 1

    def _after_step(self, task, module, progress: _Progress, total: int, per_epoch: int,
                    meter: _LossMeter, logs: Mapping[str, Any], bar, best: BestWeights) -> None:
        """Loss read-out every ``log_every`` steps, validation when due."""
        cfg, step = self.cfg, progress.step
        if step % cfg.log_every == 0 or step == total:
            mean = meter.read()  # the one sync per log interval
            if not math.isfinite(mean):
                raise RqfError(f"training diverged: loss is {mean} at step {step} "
                               "(try train.precision=fp32 or a lower train.lr)")
            shown = {"loss": mean, **{k: float(v) for k, v in logs.items()}}
            progress.losses.append({"step": step, **shown})
            bar.set_postfix({**{k: f"{v:.4g}" for k, v in shown.items()}, **self._latest},
                            refresh=False)
            if self.trackers:
                self.trackers.log_losses(step, shown)
        bar.update(1)
        due = (cfg.eval_every and step % cfg.eval_every == 0) \
            or (not cfg.eval_every and step % per_epoch == 0) or step == total
        if task.validates and due:
            module.eval()
            with torch.no_grad():
                metrics = task.validation_metrics(module)
            record = {"step": step, "seconds": round(progress.elapsed(), 2), **metrics}
            module.train()
            progress.history.append(record)
            best.offer(record, module)
            self._report_validation(record, total, best, bar)

    def _report_validation(self, record: Mapping[str, Any], total: int, best: BestWeights,
                           bar) -> None:
        """One line per validation (step, seconds, the monitored metric and the best so far,
        or the first metrics), the latest value beside the loss, and the trackers."""
        monitor = self.cfg.monitor
        values = {k: v for k, v in record.items() if k not in ("step", "seconds")
                  and isinstance(v, (int, float))}
        shown = {monitor: values[monitor]} if monitor in values else dict(list(values.items())[:3])
        line = (f"validation at step {record['step']}/{total} ({record['seconds']:.0f} s): "
                + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))
        if monitor in values and best.step is not None:
            line += f" (best {best.value:.4g} at step {best.step})"
        self._latest = {k: f"{v:.4g}" for k, v in shown.items()}
        if self.info.is_main:
            if getattr(bar, "disable", True):
                self.echo(line)
            else:
                from tqdm.auto import tqdm

                tqdm.write(line, file=sys.stderr)
        if self.trackers:
            self.trackers.log_validation(int(record["step"]), record)

    # -- checkpoints --------------------------------------------------------------------------
    def _due_for_checkpoint(self, step: int, total: int, last_save: float) -> bool:
        cfg = self.cfg
        if step == total:
            return True
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            return True
        # and by time: a killed run loses at most checkpoint_minutes of work, and a short run
        # spends nothing on checkpoints it would never resume from
        return bool(cfg.checkpoint_minutes) and \
            time.monotonic() - last_save >= cfg.checkpoint_minutes * 60

    def _remove_stale_temporaries(self) -> None:
        # a kill during a checkpoint write leaves the temporary file atomic_path made
        if self.info.is_main and self.checkpoint_dir and self.checkpoint_dir.is_dir():
            for tmp in self.checkpoint_dir.glob(".step_*.pt.*.tmp"):
                tmp.unlink(missing_ok=True)

    def _latest_checkpoint(self) -> Path | None:
        found = list_checkpoints(self.checkpoint_dir) if self.checkpoint_dir else []
        return found[-1][1] if found else None

    @staticmethod
    def _check_fingerprint(payload: Mapping[str, Any], path: Path,
                           fingerprint: Mapping[str, Any]) -> None:
        saved = payload.get("extra", {})
        for key, value in fingerprint.items():
            if key in saved and saved[key] != value:
                raise RqfError(f"{path}: checkpoint was made with {key}={saved[key]!r}, "
                               f"this run has {key}={value!r}")

    def _save(self, module: torch.nn.Module, progress: _Progress,
              fingerprint: Mapping[str, Any]) -> None:
        if not self.info.is_main or self.checkpoint_dir is None:
            return
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        save_checkpoint(self.checkpoint_dir / f"step_{progress.step:08d}.pt", {
            "format": CHECKPOINT_FORMAT, "model": module.state_dict(), "rng": _rng_state(),
            "extra": dict(fingerprint), **progress.state_dict()})
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


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step",
                dynamic_ncols=True, mininterval=0.5, leave=False)
