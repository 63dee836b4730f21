"""torch.distributed in one place: process group set-up from torchrun's environment, the rank-0 rule, data
sharding, the per-task DDP wrap, and the reductions that every statistic computed from data goes through.

One process (no torchrun, or WORLD_SIZE=1) runs the same code: every helper is then the identity, so the
single-process engine needs no branch of its own.

* Training data: `EpochShareSampler`, the single-process shuffle of the epoch (seeded by seed, task, epoch):
  rank r takes positions r, r+N, r+2N...,
  so with a per-rank batch of batch_size / N the union of the ranks' batches at step i is exactly the
  single-process batch i (`train.batch_size` is the global batch).
* Passes without gradient (evaluation, features for prototypes / head init / SDC, InfLoRA's covariances)
  read a strided shard with no padding (`shard`): sums are all-reduced, per-sample tensors gathered back
  into dataset order, so no sample is counted twice and uneven last shards need nothing special.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import logging
import math
import os
from collections.abc import Callable, Iterator
from typing import Any, Literal, TypeVar, overload

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, Sampler, Subset

from sdlora.collectives import active, all_reduce_sum, gather_shards, is_main, rank, world_size
from sdlora.engine.launch import launched

log = logging.getLogger("sdlora")

__all__ = ["RankFailed", "active", "all_reduce_sum", "from_main", "gather_shards", "is_main", "local_device", "no_sync",
           "rank", "session", "shard", "train_sampler", "world_size", "wrap"]

T = TypeVar("T")

#: seconds a collective waits for the other ranks before the process group gives up (no hang forever)
TIMEOUT_ENV = "SDLORA_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800


class RankFailed(RuntimeError):
    """Another rank (rank 0, for the steps that only it performs) failed; this rank stops too."""


def local_device(device: torch.device) -> torch.device:
    """Under a launcher each rank takes the GPU of its LOCAL_RANK; a CPU stays the CPU."""
    if device.type != "cuda" or not launched():
        return device
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


@contextlib.contextmanager
def session(device: torch.device) -> Iterator[torch.device]:
    """Join the launcher's process group (NCCL on GPUs, gloo on CPUs) for the block; yields this rank's device.

    Outside a launcher, or when the caller already set up a process group, nothing is created or destroyed.
    Other ranks log warnings only (rank 0 speaks for the run)."""
    device = local_device(device)
    if device.type == "cuda" and device.index is not None:  # plain "cuda" (one process) keeps the current GPU
        torch.cuda.set_device(device)
    if not launched() or active():
        yield device
        return
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    level = log.level
    if not is_main():
        log.setLevel(logging.WARNING)
    try:
        yield device
    finally:
        log.setLevel(level)
        dist.destroy_process_group()


@overload
def from_main(fn: Callable[[], T], share: Literal[True] = True) -> T: ...
@overload
def from_main(fn: Callable[[], T], share: bool) -> T | None: ...
def from_main(fn: Callable[[], T], share: bool = True) -> T | None:
    """Run `fn` on rank 0 only; every rank gets its result (`share=False`: the others get None, for results
    that stay on rank 0, like an open log file). An exception there is re-raised on rank 0 and becomes
    RankFailed on the others: every rank stops, none waits forever."""
    if not active():
        return fn()
    box: list[Any] = [None]
    error: BaseException | None = None
    result: T | None = None
    if is_main():
        try:
            result = fn()
            box[0] = ("ok", result if share else None)
        except BaseException as err:  # noqa: BLE001 - re-raised below once the others are told
            error = err
            box[0] = ("error", f"{type(err).__name__}: {err}")
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    status, value = box[0]
    if status == "error":
        raise RankFailed(f"rank 0 failed: {value}")
    return result if is_main() else value


def shard(dataset: Dataset) -> Dataset:
    """This rank's strided share of `dataset` (samples r, r+N, ...), no padding: for passes without gradient."""
    if not active():
        return dataset
    return Subset(dataset, range(rank(), len(dataset), world_size()))  # type: ignore[arg-type]


#: (the epoch's order, the dataset, the epoch's generator) -> another order of the same samples
Reorder = Callable[[list[int], Dataset, torch.Generator], list[int]]


class EpochShareSampler(Sampler[int]):
    """The epoch's shuffled order, this rank's share: positions r, r+N, r+2N... (`train.batch_size` is global).

    The order is the one `DataLoader(shuffle=True, generator=g)` gives in one process (the loader draws one
    int64 from `g` for its base seed, then RandomSampler draws torch.randperm from it), so a single-process
    run keeps exactly the order of earlier versions and N processes split that very permutation. With fewer
    samples than a multiple of N it wraps around by up to N-1 samples (every rank takes the same number of
    steps); one process never repeats a sample. `reorder` (length buckets) rearranges the whole epoch's order
    before it is split, drawing from the same generator after the permutation, so every rank rearranges alike."""

    def __init__(self, num_samples: int, generator: torch.Generator, reorder: Callable[[list[int]], list[int]] |
                 None = None) -> None:
        torch.empty((), dtype=torch.int64).random_(generator=generator)
        order = torch.randperm(num_samples, generator=generator).tolist()
        if reorder is not None:
            order = reorder(order)
        n = world_size()
        total = math.ceil(num_samples / n) * n
        order += order[: total - num_samples]
        self.indices = order[rank():total:n]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def train_sampler(dataset: Dataset, generator: torch.Generator, reorder: Reorder | None = None) -> EpochShareSampler:
    """This rank's share of the epoch's order (`generator`: `seeding.data_generator(seed, task, epoch)`),
    rearranged by `reorder` when given."""
    bound = None if reorder is None else (lambda order: reorder(order, dataset, generator))
    return EpochShareSampler(len(dataset), generator, bound)  # type: ignore[arg-type]


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """DDP around the method for one task (its trainable parameters change at every `begin_task`): gradients
    of every parameter that requires one are averaged over ranks during backward. Alone: the module.

    `find_unused_parameters`: some trainable parameters may get no gradient (old head rows under
    `method.classifier.loss: current` with `freeze_old_head: false`); their .grad then stays None on every rank, as it
    would in one process. Buffers are not broadcast: every rank computes the same ones from reduced data."""
    if not active():
        return module
    no_buffer_sync: dict[str, Any] = {BUFFER_SYNC: False}
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=True, **no_buffer_sync)


#: DDP's switch for re-broadcasting buffers at every forward (renamed in torch 2.14)
BUFFER_SYNC = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
               else "broadcast_buffers")


def no_sync(model: nn.Module) -> contextlib.AbstractContextManager:
    """Skip DDP's gradient averaging (the micro-batches of an accumulated step before the last)."""
    return model.no_sync() if isinstance(model, DistributedDataParallel) else contextlib.nullcontext()

