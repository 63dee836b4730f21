"""Class prototypes (mean feature per class), the cosine nearest-class-mean rule, and drift compensation.

    logit_c(x) = cos(f(x), mu_c),  mu_c = mean of f over the training samples of class c
    SDC (Yu et al., CVPR 2020):  mu_c += sum_i w_ic delta_i / sum_i w_ic,  delta_i = f_new(x_i) - f_old(x_i),
                                 w_ic = exp(-||g(f_old(x_i)) - g(mu_c)||^2 / (2 sigma^2)),  g = L2-normalise
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from sdlora.collectives import gather_shards
from sdlora.data.length_order import dataset_order
from sdlora.devices import move_to
from sdlora.methods.drift import affine_drift


@torch.no_grad()
def collect_features(features_of: Callable[[Any], torch.Tensor], loader: DataLoader,
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, D] in float32, labels [N]) over one pass of `loader`.

    The rows come in dataset order whatever order the loader reads (length-aware passes read longest first:
    `dataset_order`). In a multi-process run the trainer's loaders hold one strided shard per rank: the rows
    of every rank are gathered back in dataset order, so every rank fits the same means / drift / head rows
    from all samples."""
    feats, labels = [], []
    for inputs, y in loader:
        feats.append(features_of(move_to(inputs, device)).float())
        labels.append(y.to(device))
    feats_in_order, labels_in_order = (dataset_order(torch.cat(rows), loader) for rows in (feats, labels))
    return gather_shards(feats_in_order), gather_shards(labels_in_order)


@torch.no_grad()
def sdc_weights(means: torch.Tensor, before: torch.Tensor, sigma: float) -> torch.Tensor:
    """SDC's weights [C, N], normalised over the samples: w_ic / sum_i w_ic with
    w_ic = exp(-||g(before_i) - g(mu_c)||^2 / (2 sigma^2)) (g = L2-normalise; float32)."""
    dist2 = torch.cdist(F.normalize(means.float(), dim=-1), F.normalize(before, dim=-1)) ** 2
    return torch.softmax(-dist2 / (2 * sigma**2), dim=1)  # = w_ic / sum_i w_ic, numerically safe


def sdc_shift(means: torch.Tensor, before: torch.Tensor, after: torch.Tensor, sigma: float) -> torch.Tensor:
    """SDC's shift of each class mean [C, D]: sum_i w_ic (after_i - before_i) / sum_i w_ic (`sdc_weights`)."""
    return sdc_weights(means, before, sigma) @ (after - before)


class ClassPrototypes(nn.Module):
    """A growing [classes, dim] buffer of class means; as a classifier (`class_heads.ClassHead`), cosine NCM."""

    #: exported as unit-norm class means applied to the L2-normalised feature
    export_kind = "cosine"
    feature_map = None  # (W, b) apply to the normalised feature itself
    means: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("means", torch.zeros(0, dim))

    @property
    def num_classes(self) -> int:
        return self.means.shape[0]

    def resize_to(self, num_classes: int) -> None:
        self.means = torch.zeros(num_classes, self.means.shape[1], device=self.means.device)

    @torch.no_grad()
    def fit(self, features: torch.Tensor, labels: torch.Tensor, low: int, high: int) -> dict[str, Any]:
        """Set the means of classes [low, high) from features with (remapped) labels; nothing to report."""
        idx = labels - low
        sums = torch.zeros(high - low, features.shape[1], device=features.device).index_add_(0, idx, features)
        counts = torch.bincount(idx, minlength=high - low).to(features.dtype)
        if (counts == 0).any():
            missing = (torch.nonzero(counts == 0).flatten() + low).tolist()
            raise ValueError(f"no training samples for classes {missing}")
        if self.num_classes < high:
            grown = torch.zeros(high, self.means.shape[1], device=self.means.device)
            grown[: self.num_classes] = self.means
            self.means = grown
        self.means[low:high] = (sums / counts[:, None]).to(self.means.device)
        return {}

    @torch.no_grad()
    def compensate_drift(self, before: torch.Tensor, after: torch.Tensor, upto: int, sigma: float) -> float:
        """SDC on classes [0, upto) from the same samples' features before and after training; returns the
        mean shift of the prototypes (in feature units)."""
        if upto == 0:
            return 0.0
        shift = sdc_shift(self.means[:upto], before, after, sigma)
        self.means[:upto] += shift
        return float(shift.norm(dim=-1).mean())

    @torch.no_grad()
    def compensate_affine(self, before: torch.Tensor, after: torch.Tensor, upto: int, ridge: float) -> float:
        """The affine drift of the feature (`methods.drift`) on the means of classes [0, upto): mu -> mu P + b;
        returns the mean shift of the prototypes (in feature units)."""
        if upto == 0:
            return 0.0
        p, b = affine_drift(before, after, ridge)
        moved = (self.means[:upto].double() @ p + b).to(self.means)
        shift = moved - self.means[:upto]
        self.means[:upto] = moved
        return float(shift.norm(dim=-1).mean())

    @staticmethod
    def lift(features: torch.Tensor) -> torch.Tensor:
        """What `export_head`'s (W, b) apply to: the L2-normalised feature."""
        return F.normalize(features.float(), dim=-1)

    def cosine_logits(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features.float(), dim=-1) @ F.normalize(self.means, dim=-1).T

    logits = cosine_logits

    def export_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit-norm class means, zeros): logits = normalize(f) W^T."""
        return F.normalize(self.means, dim=-1).clone(), torch.zeros(self.num_classes, device=self.means.device)

    def stored_numel(self) -> int:
        return self.means.numel()

    def checkpoint_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {"prototype_classes": self.num_classes}, {"prototypes": self.means}

    def load_checkpoint_state(self, structure: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.resize_to(structure["prototype_classes"])
        self.means.copy_(tensors["prototypes"])
