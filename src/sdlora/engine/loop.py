"""One epoch of training and one evaluation pass: the same code for every method."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from sdlora.data.scenario import Scenario, TaskInfo
from sdlora.devices import move_to
from sdlora.engine.distributed import all_reduce_sum, no_sync, world_size
from sdlora.methods.base import Method

T = TypeVar("T")


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
    #: what the forward goes through: the method, or DDP around it in a multi-process run
    model: nn.Module | None = None
    #: micro-batches per optimiser step (`train.accumulate_steps`)
    accumulate: int = 1
    #: optimiser steps between reads of the loss back to the host (`read_interval`): 1 on the CPU, where a
    #: read is free; on a GPU every read waits for the queued kernels, so losses are read in groups
    read_every: int = 1


#: optimiser steps per loss read-back on a GPU (the NaN check, the logged values and the progress bar lag by
#: at most this many steps; the values and the batch a NaN is reported at are the same)
GPU_READ_EVERY = 16


def read_interval(device: torch.device) -> int:
    return GPU_READ_EVERY if device.type == "cuda" else 1


class TrainingStep(nn.Module):
    """`Method.training_step` as a module's forward, so that DDP's forward (which arms its gradient averaging)
    runs the whole step: auxiliary losses and extra passes included (Lightning wraps its modules the same way)."""

    def __init__(self, method: Method) -> None:
        super().__init__()
        self.method = method

    def forward(self, batch: tuple[Any, torch.Tensor], task: TaskInfo) -> Any:
        return self.method.training_step(batch, task)


def groups_of(loader: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive groups of `size` items (the last one may be shorter)."""
    group: list[T] = []
    for item in loader:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def train_epoch(ctx: StepContext, loader: DataLoader, task: TaskInfo, bar: Any,
                on_step: Callable[[float], None] | None = None) -> float:
    """Train one epoch; returns the mean loss (`on_step` gets each step's). Raises TrainingDiverged on a
    non-finite loss.

    One optimiser step per group of `ctx.accumulate` micro-batches; each micro-batch's mean loss is weighted
    by its share of the group's samples, so the gradient is the one of the whole group's mean loss (a short
    last group included). Under DDP the gradients are averaged over ranks at the group's last backward; the
    ranks' groups have equal sizes (DistributedSampler), so the step equals one process's on the global batch.
    """
    ctx.method.train()
    model = ctx.model if ctx.model is not None else TrainingStep(ctx.method)
    params = [p for g in ctx.optimizer.param_groups for p in g["params"]]
    total, steps = 0.0, 0
    pending: list[torch.Tensor] = []  # step losses still on the device

    def read() -> None:
        """The pending steps' losses (means over ranks) in order: NaN check, totals, logs, progress bar."""
        nonlocal total, steps
        values = [v / world_size() for v in all_reduce_sum(torch.stack(pending).float()).tolist()]
        pending.clear()
        for value in values:  # every rank sees the same values: all stop together on a NaN
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"task {task.index + 1}: the loss became {value} at batch {steps + 1}; "
                    "lower train.lr, set train.grad_clip, or use train.amp=bf16 instead of fp16"
                )
            total += value
            steps += 1
            if on_step is not None:
                on_step(value)
            bar.update(1)
        bar.set_postfix(loss=f"{total / steps:.4f}")

    for group in groups_of(loader, ctx.accumulate):
        size = sum(len(labels) for _, labels in group)
        ctx.optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), device=ctx.device)
        for i, (inputs, labels) in enumerate(group):
            inputs, labels = move_to(inputs, ctx.device), labels.to(ctx.device)
            with no_sync(model) if i < len(group) - 1 else contextlib.nullcontext():
                with autocast(ctx.device, ctx.amp):
                    step = model((inputs, labels), task)  # Method.training_step, through DDP when distributed
                ctx.method.step_scalars.add(step.scalars)
                loss = step.loss * (len(labels) / size)
                (ctx.scaler.scale(loss) if ctx.scaler is not None else loss).backward()
            step_loss += loss.detach()
        pending.append(step_loss)
        if len(pending) >= ctx.read_every:
            read()  # on the CPU (read_every 1): before the step, so a NaN step is never applied
        if ctx.scaler is not None:
            ctx.scaler.unscale_(ctx.optimizer)
        if ctx.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, ctx.grad_clip)
        if ctx.scaler is not None:
            ctx.scaler.step(ctx.optimizer)
            ctx.scaler.update()
        else:
            ctx.optimizer.step()
    if pending:
        read()
    return total / max(steps, 1)


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
    """Accuracy (percent) on each seen task's classes, and the number of samples of each task.

    In a multi-process run `loader` holds this rank's shard (`distributed.shard`); the counts are summed."""
    n_tasks = task.index + 1
    correct = np.zeros(n_tasks, dtype=np.int64)
    count = np.zeros(n_tasks, dtype=np.int64)
    for pred, true in predictions(method, loader, device, amp, task.total):
        owner = scenario.task_of_label(true)
        np.add.at(count, owner, 1)
        np.add.at(correct, owner, (pred == true).astype(np.int64))
    correct, count = (all_reduce_sum(torch.from_numpy(a)).numpy() for a in (correct, count))  # shards -> all
    acc = [100.0 * c / n if n else 0.0 for c, n in zip(correct, count, strict=True)]
    return acc, count.tolist()
