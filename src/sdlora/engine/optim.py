"""Optimisers and learning-rate schedules from the config (the official code ignores them; we do not).

The first task may use its own lr / epochs / milestones / gamma (PILOT's init_lr, init_epoch, ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from sdlora.config import TrainConfig


@dataclass(frozen=True)
class TaskSchedule:
    lr: float
    epochs: int
    milestones: list[int]
    gamma: float


def task_schedule(cfg: TrainConfig, task_index: int) -> TaskSchedule:
    first = cfg.first_task if task_index == 0 else None

    def pick(name: str) -> Any:
        value = getattr(first, name) if first is not None else None
        return getattr(cfg, name) if value is None else value

    return TaskSchedule(pick("lr"), pick("epochs"), list(pick("milestones")), pick("gamma"))


OPTIMIZERS: dict[str, Callable[[list[dict[str, Any]], TrainConfig, float], torch.optim.Optimizer]] = {
    "sgd": lambda groups, c, lr: torch.optim.SGD(groups, lr=lr, momentum=c.momentum, weight_decay=c.weight_decay),
    "adam": lambda groups, c, lr: torch.optim.Adam(groups, lr=lr, betas=(c.betas[0], c.betas[1]),
                                                   weight_decay=c.weight_decay),
    "adamw": lambda groups, c, lr: torch.optim.AdamW(groups, lr=lr, betas=(c.betas[0], c.betas[1]),
                                                     weight_decay=c.weight_decay),
}


def build_optimizer(groups: list[dict[str, Any]], cfg: TrainConfig, schedule: TaskSchedule) -> torch.optim.Optimizer:
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("the method has no trainable parameters for this task")
    return OPTIMIZERS[cfg.optimizer](groups, cfg, schedule.lr)


SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer, TrainConfig, TaskSchedule], Any]] = {
    "constant": lambda opt, c, s: torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0),
    "multistep": lambda opt, c, s: torch.optim.lr_scheduler.MultiStepLR(opt, s.milestones, gamma=s.gamma),
    "cosine": lambda opt, c, s: torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(s.epochs, 1), eta_min=c.min_lr),
    "quarter_cosine": lambda opt, c, s: torch.optim.lr_scheduler.LambdaLR(opt, lambda e: quarter_cosine(e, s.epochs)),
}


def quarter_cosine(epoch: int, epochs: int) -> float:
    """The lr factor of the InfLoRA release's `CosineSchedule` (utils/schedulers.py, from CODA-Prompt):
    cos(99 pi e / (200 (K - 1))) for epoch e of K, i.e. the first quarter of a cosine period, from 1 down to
    cos(0.495 pi) ~ 0.0157 at the last epoch (never 0). `cosine` (CosineAnnealingLR) instead follows
    (1 + cos(pi e / K)) / 2 = cos^2(pi e / 2K): lower in between (0.5 vs 0.71 half-way). K = 1: constant."""
    return math.cos(99 * math.pi * epoch / (200 * max(epochs - 1, 1)))


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, schedule: TaskSchedule) -> Any:
    """An epoch-level scheduler (stepped once per epoch)."""
    return SCHEDULERS[cfg.scheduler](opt, cfg, schedule)
