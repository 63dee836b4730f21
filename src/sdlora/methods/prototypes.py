"""Class prototypes (mean feature per class) and the cosine nearest-class-mean rule.

    logit_c(x) = cos(f(x), mu_c),  mu_c = mean of f over the training samples of class c
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from sdlora.backbones.base import move_to


class ClassPrototypes(nn.Module):
    """A growing [classes, dim] buffer of class means."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("means", torch.zeros(0, dim))

    @property
    def num_classes(self) -> int:
        return self.means.shape[0]

    def resize_to(self, num_classes: int) -> None:
        self.means = torch.zeros(num_classes, self.means.shape[1], device=self.means.device)

    @torch.no_grad()
    def fit(self, features_of, loader: DataLoader, low: int, high: int) -> None:
        """Set the means of classes [low, high) from one pass over `loader` (labels already remapped)."""
        device = self.means.device
        sums = torch.zeros(high - low, self.means.shape[1], device=device)
        counts = torch.zeros(high - low, device=device)
        for inputs, labels in loader:
            feats = features_of(move_to(inputs, device)).float()
            idx = labels.to(device) - low
            sums.index_add_(0, idx, feats)
            counts.index_add_(0, idx, torch.ones_like(idx, dtype=torch.float))
        if (counts == 0).any():
            missing = (torch.nonzero(counts == 0).flatten() + low).tolist()
            raise ValueError(f"no training samples for classes {missing}")
        means = sums / counts[:, None]
        if self.num_classes < high:
            grown = torch.zeros(high, self.means.shape[1], device=device)
            grown[: self.num_classes] = self.means
            self.means = grown
        self.means[low:high] = means

    def cosine_logits(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features.float(), dim=-1) @ F.normalize(self.means, dim=-1).T
