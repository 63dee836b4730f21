"""A classifier head that grows by one block of rows per task (old rows kept, optionally frozen)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class IncrementalHead(nn.Module):
    """logits = x W^T + b with W = [W_0; W_1; ...], one block of rows per task.

    New rows are initialised as the official code does (kaiming-uniform, 'linear' gain; bias 0).
    Blocks are separate parameters, so freezing old rows is `requires_grad=False`, which also keeps
    weight decay and Adam's moments from moving them.
    """

    device_tag: torch.Tensor

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        # follows `.to(device)` while the head has no rows yet, so new rows are made where the model lives
        self.register_buffer("device_tag", torch.zeros(0), persistent=False)

    @property
    def num_classes(self) -> int:
        return sum(w.shape[0] for w in self.weights)

    def block_sizes(self) -> list[int]:
        return [w.shape[0] for w in self.weights]

    def grow(self, n_new: int, freeze_old: bool = True) -> None:
        if n_new <= 0:
            raise ValueError(f"a task must add at least one class, got {n_new}")
        device = self.device_tag.device
        w = torch.empty(n_new, self.in_features, device=device)
        nn.init.kaiming_uniform_(w, nonlinearity="linear")
        if freeze_old:
            for p in (*self.weights, *self.biases):
                p.requires_grad_(False)
        self.weights.append(nn.Parameter(w))
        self.biases.append(nn.Parameter(torch.zeros(n_new, device=device)))

    def weight(self) -> torch.Tensor:
        return torch.cat(list(self.weights), 0)

    def bias(self) -> torch.Tensor:
        return torch.cat(list(self.biases), 0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(features, self.weight().to(features.dtype), self.bias().to(features.dtype))

    def resize_to(self, block_sizes: list[int]) -> None:
        """Rebuild empty blocks of the given sizes (before loading a checkpoint)."""
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for n in block_sizes:
            self.grow(n, freeze_old=False)
