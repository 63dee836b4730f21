"""Linear discriminant analysis from class statistics: a training-free head, exact under class-incremental updates.

    g(x) = f(x) / ||f(x)||                                       (L2-normalised feature)
    S = pooled within-class covariance of g  (class_stats.PooledGaussians: running sums, ddof 0)
    Sigma = (1 - a) S + a (tr S / D) I                           (a = `shrinkage`, scikit-learn's shrunk_covariance)
    a_OAS = min(1, (tr S^2 + (tr S)^2) / ((N + 1) (tr S^2 - (tr S)^2 / D)))   (`shrinkage: oas`)
    logit_c(x) = w_c^T g(x) + b_c,   w_c = Sigma^{-1} mu_c,   b_c = -1/2 mu_c^T Sigma^{-1} mu_c  [+ log(n_c / N)]

The bracketed log prior is added with `priors: empirical` (scikit-learn's LinearDiscriminantAnalysis with
solver='lsqr', shrinkage=a and its default priors gives the same coef_ and intercept_ on g); `uniform` leaves it out.
The head stores w_c - mean_k w_k and b_c - mean_k b_k: that subtracts the same number from every logit of a sample,
so argmax and softmax are unchanged, and it removes the large common part of the logits (float32 keeps their
differences when Sigma is small and the class means are close).
Each task adds its classes' sums, counts and within-class scatter; nothing is recomputed from old data.

`shrinkage: oas` picks a from the data at every refit: the Oracle Approximating Shrinkage (Chen et al., IEEE TSP
2010; scikit-learn's `covariance.oas` on the class-centred features), a function of S and N alone, so it stays exact
under class-incremental updates. It is large while few samples per class are seen (where a small fixed a overfits
S: below nearest-class-mean with 12 samples per class) and small on full benchmarks.

When the adapted features move (SD-LoRA, InfLoRA, ...), `drift: sdc` moves the stored means of old classes by SDC's
estimate from the current task's samples (`prototypes.sdc_shift`, computed on g), mu_c += shift_c. The covariance
is not compensated: SDC estimates one shift per class, not a change of spread, so S keeps each task's
within-class scatter as measured when that task ended.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from sdlora.methods.class_stats import PooledGaussians
from sdlora.methods.prototypes import sdc_shift

Priors = Literal["uniform", "empirical"]
Shrinkage = float | Literal["oas"]


def oas_shrinkage(covariance: torch.Tensor, num_samples: float) -> float:
    """a_OAS = min(1, (tr S^2 + (tr S)^2) / ((N + 1) (tr S^2 - (tr S)^2 / D))) for S = `covariance` (ddof 0) of
    N samples (scikit-learn's `oas` on those samples, centred); 1 when S is a multiple of I."""
    s = covariance.double()
    trace, trace_sq = s.diagonal().sum(), (s * s).sum()
    denominator = (num_samples + 1) * (trace_sq - trace ** 2 / s.shape[0])
    return 1.0 if denominator <= 0 else min(1.0, float((trace_sq + trace ** 2) / denominator))


def shrunk(covariance: torch.Tensor, shrinkage: float) -> torch.Tensor:
    """(1 - a) S + a (tr S / D) I."""
    dim = covariance.shape[0]
    eye = torch.eye(dim, dtype=covariance.dtype, device=covariance.device)
    return (1 - shrinkage) * covariance + shrinkage * covariance.diagonal().sum() / dim * eye


def lda_weights(means: torch.Tensor, covariance: torch.Tensor, shrinkage: float,
                log_priors: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(W [C, D], b [C]) of the LDA rule: w_c = Sigma^{-1} mu_c, b_c = -1/2 mu_c^T w_c (+ log prior), in float64;
    Sigma = shrunk(covariance, shrinkage), solved by Cholesky (positive definite for shrinkage > 0 unless S = 0)."""
    sigma = shrunk(covariance.double(), shrinkage)
    means = means.double()
    weight = torch.cholesky_solve(means.T, torch.linalg.cholesky(sigma)).T
    bias = -0.5 * (weight * means).sum(-1)
    if log_priors is not None:
        bias = bias + log_priors.double()
    return weight, bias


class LDAHead(nn.Module):
    """The LDA classifier over L2-normalised features, from `PooledGaussians`; `weight` [C, D] and `bias` [C]
    (float32 buffers, centred over the classes) are recomputed from the statistics whenever they change."""

    #: how `sdlora export` describes it (sdlora.export.common.CLASSIFIER_KINDS)
    export_kind = "normalized_linear"
    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, dim: int, shrinkage: Shrinkage, priors: Priors = "uniform") -> None:
        super().__init__()
        if shrinkage != "oas" and not 0 < float(shrinkage) <= 1:
            raise ValueError(f"shrinkage must be in (0, 1] or 'oas', got {shrinkage!r}")
        self.shrinkage, self.priors = shrinkage, priors
        self.stats = PooledGaussians(dim)
        self.register_buffer("weight", torch.zeros(0, dim))
        self.register_buffer("bias", torch.zeros(0))

    @property
    def num_classes(self) -> int:
        return self.stats.num_classes

    @property
    def means(self) -> torch.Tensor:
        """The class means of g [C, D] (float32)."""
        return self.stats.means.float()

    @staticmethod
    def embed(features: torch.Tensor) -> torch.Tensor:
        """g(x) = f / ||f|| (float32)."""
        return F.normalize(features.float(), dim=-1)

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute `weight` and `bias` from the statistics."""
        counts = self.stats.counts
        log_priors = (counts / counts.sum()).log() if self.priors == "empirical" else None
        covariance = self.stats.covariance()
        weight, bias = lda_weights(self.stats.means, covariance, self.current_shrinkage(covariance), log_priors)
        self.weight, self.bias = (weight - weight.mean(0)).float(), (bias - bias.mean(0)).float()

    def current_shrinkage(self, covariance: torch.Tensor | None = None) -> float:
        """a as used now: the fixed value, or OAS's from the statistics seen so far."""
        if self.shrinkage != "oas":
            return float(self.shrinkage)
        covariance = self.stats.covariance() if covariance is None else covariance
        return oas_shrinkage(covariance, float(self.stats.counts.sum()))

    @torch.no_grad()
    def fit(self, features: torch.Tensor, labels: torch.Tensor, low: int, high: int) -> dict[str, Any]:
        """Add classes [low, high) from their (unnormalised) features; returns the shrinkage now in use."""
        self.stats.fit(self.embed(features), labels, low, high)
        self.refresh()
        return {"lda_shrinkage": self.current_shrinkage()}

    @torch.no_grad()
    def compensate_drift(self, before: torch.Tensor, after: torch.Tensor, upto: int, sigma: float) -> float:
        """SDC on the means of classes [0, upto) (on g); returns the mean shift (in units of g)."""
        if upto == 0:
            return 0.0
        shift = sdc_shift(self.stats.means[:upto], self.embed(before), self.embed(after), sigma)
        self.stats.shift_means(shift)
        self.refresh()
        return float(shift.norm(dim=-1).mean())

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(self.embed(features), self.weight, self.bias)

    def export_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, b) for logits = normalize(f) W^T + b."""
        return self.weight.clone(), self.bias.clone()

    def stored_numel(self) -> int:
        """Numbers stored to predict: W and b (the statistics are only needed to learn more classes)."""
        return self.weight.numel() + self.bias.numel()

    def checkpoint_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        s = self.stats
        return {"lda_classes": s.num_classes}, {"lda.sums": s.sums, "lda.counts": s.counts, "lda.scatter": s.scatter}

    def load_checkpoint_state(self, structure: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.stats.resize_to(structure["lda_classes"])
        for name in ("sums", "counts", "scatter"):
            getattr(self.stats, name).copy_(tensors[f"lda.{name}"])
        if self.num_classes:
            self.refresh()
