"""Per-class Gaussian statistics of features, pseudo-features drawn from them, and classifier alignment.

Only the statistics are kept (no samples): for class c with training features f_1..f_n,

    mu_c = (1/n) sum_i f_i                     Sigma_c = (1/(n-1)) sum_i (f_i - mu_c)(f_i - mu_c)^T + eps I
    kind 'variance' keeps only the diagonal of Sigma_c (D numbers per class instead of D^2)
    pseudo-feature of class c:  h = mu_c + L_c z,  z ~ N(0, I),  L_c L_c^T = Sigma_c   (Cholesky)

`align_classifier` is classifier alignment (HiDe-Prompt's task-adaptive prediction, SLCA's CA): a classifier
retrained by SGD on pseudo-features of every seen class, with no data of earlier tasks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

StatsKind = Literal["covariance", "variance"]


class ClassGaussians(nn.Module):
    """Buffers `means` [C, D] and `spread` ([C, D, D] covariances, or [C, D] variances with kind='variance')."""

    def __init__(self, dim: int, kind: StatsKind = "covariance", eps: float = 1e-4) -> None:
        super().__init__()
        self.dim, self.kind, self.eps = dim, kind, eps
        self.register_buffer("means", torch.zeros(0, dim))
        self.register_buffer("spread", torch.zeros(0, *self._spread_shape()))

    def _spread_shape(self) -> tuple[int, ...]:
        return (self.dim, self.dim) if self.kind == "covariance" else (self.dim,)

    @property
    def num_classes(self) -> int:
        return self.means.shape[0]

    def resize_to(self, num_classes: int) -> None:
        """Zeroed buffers for `num_classes` classes (before loading a checkpoint)."""
        device = self.means.device
        self.means = torch.zeros(num_classes, self.dim, device=device)
        self.spread = torch.zeros(num_classes, *self._spread_shape(), device=device)

    @torch.no_grad()
    def fit(self, features: torch.Tensor, labels: torch.Tensor, low: int, high: int) -> None:
        """Set the statistics of classes [low, high) from their features (computed in float64)."""
        if self.num_classes < high:
            grown = ClassGaussians(self.dim, self.kind, self.eps).to(self.means.device)
            grown.resize_to(high)
            grown.means[: self.num_classes] = self.means
            grown.spread[: self.num_classes] = self.spread
            self.means, self.spread = grown.means, grown.spread
        eye = torch.eye(self.dim, dtype=torch.float64, device=features.device)
        for c in range(low, high):
            rows = features[labels == c].double()
            if rows.shape[0] == 0:
                raise ValueError(f"no training samples for class {c}")
            mean = rows.mean(0)
            centred = rows - mean
            cov = centred.T @ centred / max(rows.shape[0] - 1, 1) + self.eps * eye
            self.means[c] = mean.to(self.means)
            self.spread[c] = (cov if self.kind == "covariance" else cov.diagonal()).to(self.spread)

    def factors(self, upto: int) -> torch.Tensor:
        """L_c with L_c L_c^T = Sigma_c for classes [0, upto): [upto, D, D] (covariance) or std devs [upto, D]."""
        if self.kind == "variance":
            return self.spread[:upto].sqrt()
        return torch.linalg.cholesky(self.spread[:upto].double()).to(self.means.dtype)

    def sample(self, labels: torch.Tensor, factors: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One pseudo-feature per entry of `labels` (`factors` from `factors()`)."""
        z = torch.randn(labels.shape[0], self.dim, generator=generator, device=labels.device)
        out = torch.empty_like(z)
        for c in labels.unique().tolist():
            rows = labels == c
            spread = z[rows] * factors[c] if self.kind == "variance" else z[rows] @ factors[c].T
            out[rows] = self.means[c] + spread
        return out


def align_classifier(classifier: Callable[[torch.Tensor], torch.Tensor], params: list[nn.Parameter],
                     stats: ClassGaussians, seen: int, steps: int, *, epochs: int, batch_size: int, lr: float,
                     momentum: float, weight_decay: float, generator: torch.Generator) -> float:
    """Retrain `params` of `classifier` on pseudo-features of classes [0, seen); returns the last epoch's mean loss.

    As HiDe-Prompt's `train_task_adaptive_prediction`: SGD with cosine annealing over `epochs`; every epoch
    draws a class-balanced pool of `batch_size` pseudo-features per seen class, shuffles it and takes `steps`
    batches of `batch_size` (the release takes as many batches as there are classes in the earlier tasks);
    cross-entropy over the seen classes' logits."""
    if steps < 1 or epochs < 1:
        return 0.0
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    factors = stats.factors(seen)
    device = stats.means.device
    pool = torch.arange(seen, device=device).repeat_interleave(batch_size)
    loss_sum = 0.0
    for _ in range(epochs):
        labels = pool[torch.randperm(pool.shape[0], generator=generator, device=device)][: steps * batch_size]
        features = stats.sample(labels, factors, generator)
        loss_sum = 0.0
        for i in range(0, labels.shape[0], batch_size):
            loss = F.cross_entropy(classifier(features[i:i + batch_size])[:, :seen], labels[i:i + batch_size])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach())
        schedule.step()
    return loss_sum / steps
