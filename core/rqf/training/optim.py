"""The optimizer and the learning-rate schedule a train section asks for."""

from __future__ import annotations

import math
from typing import Any

import torch

from rqf.training.config import TrainConfig


def build_optimizer(cfg: TrainConfig, params: Any, device: torch.device) -> torch.optim.Optimizer:
    """``params``: parameters or torch's parameter groups."""
    fused = {"fused": True} if device.type == "cuda" else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)


def lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    """The share of ``train.lr`` at ``step`` of ``total``: linear warm-up, then the schedule."""
    warmup, kind = cfg.warmup_steps, cfg.scheduler
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


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, total: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(cfg, step, total))
