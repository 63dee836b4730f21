"""The collectives every statistic computed from data goes through, at the bottom of the package: adapters and
methods reduce over ranks without knowing the engine. One process (no process group) makes each the identity.
The process group itself (set-up, sharding, DDP) is `sdlora.engine.distributed`.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


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
