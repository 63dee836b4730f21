"""Keyed prompt pools and the query-key matching of L2P / DualPrompt; per-task prefixes (DualPrompt, HiDe-Prompt).

    gamma(q, k_i) = 1 - cos(q, k_i)                      (the matching distance)
    select:   s(x) = the N indices with the smallest gamma(q(x), k_i) * h_i
    pull:     L_pull = sum_{i in s(x)} gamma(q(x), k_i)   (averaged over the batch), which the release
              implements as - mean_x sum_{i in s(x)} cos(q(x), k_i) (the same gradient)

`h_i` (L2P's optional prompt-frequency balancing, "diversified prompt selection") is prompt i's share of the
selections made during the previous tasks; h = 1 (plain nearest keys) when off or before any history.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sdlora.collectives import all_reduce_sum


def cosine_match(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """cos(q_b, k_i): [B, D] x [M, D] -> [B, M]."""
    return F.normalize(query, dim=-1) @ F.normalize(keys, dim=-1).T


def pull_loss(query: torch.Tensor, keys: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """mean over the batch of sum_{i in idx_b} (1 - cos(q_b, k_i)); the query is detached (frozen encoder)."""
    cos = cosine_match(query.detach(), keys).gather(1, idx)
    return (1 - cos).sum(dim=1).mean()


class KeyedPool(nn.Module):
    """M prompts (each [length, dim], or any trailing shape) with one key each, initialised uniform(-1, 1)
    (`prompt_init` / `prompt_key_init: uniform` in the PyTorch port of the L2P release, l2p-pytorch)."""

    counts: torch.Tensor
    current_counts: torch.Tensor

    def __init__(self, size: int, prompt_shape: tuple[int, ...], key_dim: int) -> None:
        super().__init__()
        self.prompts = nn.Parameter(torch.empty(size, *prompt_shape).uniform_(-1, 1))
        self.keys = nn.Parameter(torch.empty(size, key_dim).uniform_(-1, 1))
        self.register_buffer("counts", torch.zeros(size))  # selections in finished tasks (balancing)
        self.register_buffer("current_counts", torch.zeros(size))  # selections in the task being trained

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    def frequency_penalty(self) -> torch.Tensor:
        """h_i: each prompt's share of the past tasks' selections (ones before any history)."""
        total = self.counts.sum()
        return self.counts / total if total > 0 else torch.ones_like(self.counts)

    def select(self, query: torch.Tensor, top_n: int, balance: bool = False) -> torch.Tensor:
        """Indices [B, N] of the N keys nearest to each query (with frequency balancing while training)."""
        distance = 1 - cosine_match(query, self.keys)
        if balance and self.training:
            distance = distance * self.frequency_penalty()
        idx = distance.topk(top_n, dim=1, largest=False).indices
        if self.training:  # over every process's batch: the counts (and balancing) a single process would have
            counted = torch.bincount(idx.flatten(), minlength=self.size).to(self.current_counts)
            self.current_counts += all_reduce_sum(counted)
        return idx

    @torch.no_grad()
    def end_task(self) -> None:
        self.counts += self.current_counts
        self.current_counts.zero_()


class TaskPrefixes(nn.Module):
    """One prefix E^t: [layers, 2, length, dim] (prefix keys and values at each prompted layer) per task, the
    parameters `e.<t>` (DualPrompt's E-prompts, HiDe-Prompt's task prompts). Adding a task freezes the earlier
    ones; new ones start uniform(-1, 1) (or as a copy of the last, HiDe-Prompt's shared prompt pool)."""

    def __init__(self, layers: int, length: int, dim: int) -> None:
        super().__init__()
        self.layers, self.length, self.dim = layers, length, dim
        self.e = nn.ParameterList()

    @property
    def num_tasks(self) -> int:
        return len(self.e)

    def add_task(self, device: torch.device, copy_previous: bool = False) -> None:
        """A new E^t: a copy of E^{t-1} (`copy_previous`, from the second task on) or uniform(-1, 1); every
        earlier one is frozen."""
        for p in self.e:
            p.requires_grad_(False)
        if copy_previous and len(self.e):
            new = self.e[-1].detach().clone()
        else:
            new = torch.empty(self.layers, 2, self.length, self.dim, device=device).uniform_(-1, 1)
        self.e.append(nn.Parameter(new))

    def resize(self, tasks: int, device: torch.device) -> None:
        """Rebuild `tasks` fresh per-task prompts (before loading a checkpoint's tensors)."""
        self.e = nn.ParameterList()
        for _ in range(tasks):
            self.add_task(device)

    def train_only(self, task: int) -> None:
        """Task `task`'s prompt trainable, every other frozen (as `add_task` left them)."""
        for i, e in enumerate(self.e):
            e.requires_grad_(i == task)

    def stacked(self) -> torch.Tensor:
        """Every task's prefix: [tasks, layers, 2, length, dim]."""
        return torch.stack(list(self.e))


def layer_prefixes(layers: list[int], prompts: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """`inject`'s prefixes from `prompts` [B or 1, len(layers), 2, L, D]: layer -> (P_k, P_v), each [B or 1, L, D]."""
    return {layer: (prompts[:, i, 0], prompts[:, i, 1]) for i, layer in enumerate(layers)}
