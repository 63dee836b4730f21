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

from sdlora.engine.launch import launched

log = logging.getLogger("sdlora")

T = TypeVar("T")

#: seconds a collective waits for the other ranks before the process group gives up (no hang forever)
TIMEOUT_ENV = "SDLORA_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800


class RankFailed(RuntimeError):
    """Another rank (rank 0, for the steps that only it performs) failed; this rank stops too."""


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Rank 0: the only rank that writes files (checkpoints, results, plots, logs) or prints; outside the
    process group (before or after the run) the launcher's RANK tells."""
    return (rank() if active() else int(os.environ.get("RANK", "0"))) == 0


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


def _comm_device(tensor: torch.Tensor) -> torch.device:
    """NCCL reduces CUDA tensors only; gloo takes CPU tensors."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else tensor.device


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over ranks (a new tensor on `tensor`'s device; `tensor` itself when alone)."""
    if not active():
        return tensor
    out = tensor.detach().clone().to(_comm_device(tensor))
    dist.all_reduce(out)
    return out.to(tensor.device)


def mean_over_ranks(value: torch.Tensor) -> float:
    """The mean of a scalar over ranks, as a float (the loss every rank logs and checks)."""
    return float(all_reduce_sum(value.detach().float().reshape(1))) / world_size()


def gather_shards(tensor: torch.Tensor) -> torch.Tensor:
    """Per-sample rows of the ranks' `shard`s (rank r holds samples r, r+N, ...) back in dataset order."""
    if not active():
        return tensor
    n = world_size()
    comm = _comm_device(tensor)
    sizes = [torch.zeros(1, dtype=torch.long, device=comm) for _ in range(n)]
    dist.all_gather(sizes, torch.tensor([tensor.shape[0]], device=comm))
    counts = [int(s) for s in sizes]
    padded = torch.zeros((max(counts), *tensor.shape[1:]), dtype=tensor.dtype, device=comm)
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(n)]
    dist.all_gather(parts, padded)
    out = torch.empty((sum(counts), *tensor.shape[1:]), dtype=tensor.dtype, device=comm)
    for r, (part, count) in enumerate(zip(parts, counts, strict=True)):
        out[r::n] = part[:count]
    return out.to(tensor.device)


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
    `train.loss: current` with `freeze_old_head: false`); their .grad then stays None on every rank, as it
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

