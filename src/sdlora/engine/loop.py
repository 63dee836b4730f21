"""One epoch of training and one evaluation pass: the same code for every method."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from sdlora.backbones.base import move_to
from sdlora.data.scenario import Scenario, TaskInfo
from sdlora.methods.base import Method


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Mixed precision on a GPU only (`train.amp`); a no-op on the CPU."""
    if device.type != "cuda" or amp == "none":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=AUTOCAST_DTYPES[amp])


@dataclass
class StepContext:
    method: Method
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    device: torch.device
    amp: str
    grad_clip: float | None


def train_epoch(ctx: StepContext, loader: DataLoader, task: TaskInfo, bar: Any,
                on_step: Callable[[float], None] | None = None) -> float:
    """Train one epoch; returns the mean loss (`on_step` gets each step's). Raises TrainingDiverged on a
    non-finite loss."""
    ctx.method.train()
    params = [p for g in ctx.optimizer.param_groups for p in g["params"]]
    total, batches = 0.0, 0
    for inputs, labels in loader:
        inputs, labels = move_to(inputs, ctx.device), labels.to(ctx.device)
        with autocast(ctx.device, ctx.amp):
            step = ctx.method.training_step((inputs, labels), task)  # the method contract (issue 10)
        ctx.method.step_scalars.add(step.scalars)
        loss = step.loss
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"task {task.index + 1}: the loss became {loss.item()} at batch {batches + 1}; "
                "lower train.lr, set train.grad_clip, or use train.amp=bf16 instead of fp16"
            )
        ctx.optimizer.zero_grad(set_to_none=True)
        if ctx.scaler is not None:
            ctx.scaler.scale(loss).backward()
            ctx.scaler.unscale_(ctx.optimizer)
        else:
            loss.backward()
        if ctx.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, ctx.grad_clip)
        if ctx.scaler is not None:
            ctx.scaler.step(ctx.optimizer)
            ctx.scaler.update()
        else:
            ctx.optimizer.step()
        value = loss.item()
        total += value
        batches += 1
        if on_step is not None:
            on_step(value)
        bar.update(1)
        bar.set_postfix(loss=f"{total / batches:.4f}")
    return total / max(batches, 1)


def predictions(method: Method, loader: DataLoader, device: torch.device, amp: str,
                num_classes: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(predicted, true) labels batch by batch; argmax over every seen class, no task id."""
    method.eval()
    with torch.no_grad():
        for inputs, labels in loader:
            with autocast(device, amp):
                logits = method(move_to(inputs, device))
            yield logits[:, :num_classes].argmax(1).cpu().numpy(), labels.numpy()


def evaluate(method: Method, loader: DataLoader, scenario: Scenario, task: TaskInfo, device: torch.device,
             amp: str = "none") -> tuple[list[float], list[int]]:
    """Accuracy (percent) on each seen task's classes, and the number of samples of each task."""
    n_tasks = task.index + 1
    correct = np.zeros(n_tasks, dtype=np.int64)
    count = np.zeros(n_tasks, dtype=np.int64)
    for pred, true in predictions(method, loader, device, amp, task.total):
        owner = scenario.task_of_label(true)
        np.add.at(count, owner, 1)
        np.add.at(correct, owner, (pred == true).astype(np.int64))
    acc = [100.0 * c / n if n else 0.0 for c, n in zip(correct, count, strict=True)]
    return acc, count.tolist()
