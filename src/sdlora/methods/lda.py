"""Linear heads from class statistics, training-free and exact under class-incremental updates: linear discriminant
analysis (`kind: lda`) and ridge regression onto one-hot targets (`kind: ridge`), optionally over a fixed random
feature map of the normalised feature (`random_features: M`).

    g(x) = f(x) / ||f(x)||                                       (L2-normalised feature)
    h = phi(g) with `random_features` (`random_features.RandomFeatures`, M wide), else h = g (D wide)
    n_c, mu_c, S = counts, class means and pooled within-class covariance of h  (class_stats.PooledGaussians:
                   running sums, ddof 0),  N = sum_c n_c,  p_c = n_c / N
    shrunk(A, a) = (1 - a) A + a (tr A / D) I                    (a = `shrinkage`, scikit-learn's shrunk_covariance)
    a_OAS = min(1, (tr S^2 + (tr S)^2) / ((N + 1) (tr S^2 - (tr S)^2 / D)))   (lda, `shrinkage: oas`)

    lda:    Sigma = shrunk(S, a);  logit_c = w_c^T h + b_c,  w_c = Sigma^{-1} mu_c,  b_c = -1/2 mu_c^T w_c  [+ log p_c]
    ridge:  Q = shrunk(S + sum_c p_c mu_c mu_c^T, a)  (the second moment (1/N) sum_i h_i h_i^T),
            logit_c = w_c^T h,  w_c = Q^{-1} p_c mu_c

The bracketed log prior is added with `priors: empirical` (scikit-learn's LinearDiscriminantAnalysis with
solver='lsqr', shrinkage=a and its default priors gives the same coef_ and intercept_ on g); `uniform` leaves it out.
The ridge rule is RanPAC's head (McDonnell et al., NeurIPS 2023), W_o = (G + lam (tr G / D) I)^{-1} C with
G = sum_i h_i h_i^T, C = sum_i h_i y_i^T (one-hot y), lam = a / (1 - a): w_c = W_o[:, c] / (1 - a), since
G = N (S + sum_c p_c mu_c mu_c^T) and C[:, c] = N p_c mu_c, so both come from the same running sums as LDA.
The heads store w_c - mean_k w_k and b_c - mean_k b_k: that subtracts the same number from every logit of a
sample, so argmax and softmax are unchanged, and it removes the large common part of the logits (float32 keeps
their differences when Sigma is small and the class means are close).
Each task adds its classes' sums, counts and within-class scatter; nothing is recomputed from old data.

`shrinkage: oas` picks a from the data at every refit: the Oracle Approximating Shrinkage (Chen et al., IEEE TSP
2010; scikit-learn's `covariance.oas` on the class-centred features), a function of S and N alone, so it stays exact
under class-incremental updates. It is large while few samples per class are seen (where a small fixed a overfits
S: below nearest-class-mean with 12 samples per class) and small on full benchmarks.

When the adapted features move (SD-LoRA, InfLoRA, ...), `drift: sdc` moves the stored means of old classes by SDC's
estimate from the current task's samples, mu_c += sum_i w_ic (h(after_i) - h(before_i)) / sum_i w_ic
(`prototypes.sdc_weights`: w_ic from the distance of g(before_i) to the class mean of g). The shift is taken in the
space the statistics live in (h); without a feature map that is g, and with one the head also keeps the class
means of g (`anchors`, moved by the same weights) to weigh the samples as SDC does. The covariance is not
compensated: SDC estimates one shift per class, not a change of spread, so S keeps each task's within-class
scatter as measured when that task ended. `drift: affine` (`methods.drift`) moves both, by one affine map of g
fitted on the same samples (heads on g only: a random feature map is not affine).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from sdlora.methods.class_stats import PooledGaussians
from sdlora.methods.drift import affine_drift
from sdlora.methods.prototypes import ClassPrototypes, sdc_weights
from sdlora.methods.random_features import RandomFeatures

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


def ridge_weights(means: torch.Tensor, covariance: torch.Tensor, priors: torch.Tensor,
                  shrinkage: float) -> torch.Tensor:
    """W [C, D] of the ridge rule: w_c = Q^{-1} p_c mu_c, Q = shrunk(S + sum_c p_c mu_c mu_c^T, shrinkage), in
    float64 (`priors` p_c = n_c / N; Q is positive definite for shrinkage > 0 unless every h is 0)."""
    means, priors = means.double(), priors.double()
    second_moment = covariance.double() + (means.T * priors) @ means
    targets = priors[:, None] * means
    return torch.cholesky_solve(targets.T, torch.linalg.cholesky(shrunk(second_moment, shrinkage))).T


class LDAHead(nn.Module):
    """The LDA classifier over h (g, or a random feature map of it), from `PooledGaussians`; `weight` [C, M] and
    `bias` [C] (float32 buffers, centred over the classes) are recomputed from the statistics whenever they change.
    `solve` is the rule (`RidgeHead` overrides it); the rest (statistics, drift, checkpoint) is shared."""

    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, dim: int, shrinkage: Shrinkage, priors: Priors = "uniform",
                 feature_map: RandomFeatures | None = None) -> None:
        super().__init__()
        if shrinkage != "oas" and not 0 < float(shrinkage) <= 1:
            raise ValueError(f"shrinkage must be in (0, 1] or 'oas', got {shrinkage!r}")
        self.shrinkage, self.priors = shrinkage, priors
        self.feature_map = feature_map
        width = dim if feature_map is None else feature_map.width
        self.stats = PooledGaussians(width)
        # the class means of g, to weigh SDC's samples (without a feature map they are the statistics' own means)
        self.anchors: ClassPrototypes | None = None if feature_map is None else ClassPrototypes(dim)
        self.register_buffer("weight", torch.zeros(0, width))
        self.register_buffer("bias", torch.zeros(0))

    @property
    def export_kind(self) -> str:
        """How `sdlora export` describes it (sdlora.export.common.CLASSIFIER_KINDS); `random_features`: not linear
        in the feature, so no export format writes it (`Method.check_exportable` refuses)."""
        return "normalized_linear" if self.feature_map is None else "random_features"

    @property
    def num_classes(self) -> int:
        return self.stats.num_classes

    @property
    def means(self) -> torch.Tensor:
        """The class means of h [C, M] (float32)."""
        return self.stats.means.float()

    @staticmethod
    def embed(features: torch.Tensor) -> torch.Tensor:
        """g(x) = f / ||f|| (float32)."""
        return F.normalize(features.float(), dim=-1)

    def _map(self, g: torch.Tensor) -> torch.Tensor:
        return g if self.feature_map is None else self.feature_map(g)

    def lift(self, features: torch.Tensor) -> torch.Tensor:
        """h(x), what `weight` and `bias` apply to: logits = h W^T + b."""
        return self._map(self.embed(features))

    def solve(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, b) in float64 from the statistics: the LDA rule."""
        counts = self.stats.counts
        log_priors = (counts / counts.sum()).log() if self.priors == "empirical" else None
        covariance = self.stats.covariance()
        return lda_weights(self.stats.means, covariance, self.current_shrinkage(covariance), log_priors)

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute `weight` and `bias` from the statistics."""
        weight, bias = self.solve()
        self.weight, self.bias = (weight - weight.mean(0)).float(), (bias - bias.mean(0)).float()

    def current_shrinkage(self, covariance: torch.Tensor | None = None) -> float:
        """a as used now: the fixed value, or OAS's from the statistics seen so far."""
        if self.shrinkage != "oas":
            return float(self.shrinkage)
        covariance = self.stats.covariance() if covariance is None else covariance
        return oas_shrinkage(covariance, float(self.stats.counts.sum()))

    @torch.no_grad()
    def fit(self, features: torch.Tensor, labels: torch.Tensor, low: int, high: int) -> dict[str, Any]:
        """Add classes [low, high) from their (unnormalised) features; returns what results.json's `task_info`
        records of the fit (`fit_report`)."""
        g = self.embed(features)
        self.stats.fit(self._map(g), labels, low, high)
        if self.anchors is not None:
            self.anchors.fit(g, labels, low, high)
        self.refresh()
        return self.fit_report()

    def fit_report(self) -> dict[str, Any]:
        """The shrinkage now in use (OAS's choice changes as classes are added)."""
        return {"lda_shrinkage": self.current_shrinkage()}

    @torch.no_grad()
    def compensate_drift(self, before: torch.Tensor, after: torch.Tensor, upto: int, sigma: float) -> float:
        """SDC on the means of classes [0, upto), in the space of the statistics; returns the mean shift of the
        class means of g (in units of g, whatever the feature map)."""
        if upto == 0:
            return 0.0
        g_before, g_after = self.embed(before), self.embed(after)
        anchors = self.stats.means if self.anchors is None else self.anchors.means
        weights = sdc_weights(anchors[:upto], g_before, sigma)
        g_shift = weights @ (g_after - g_before)
        if self.anchors is not None:
            self.anchors.means[:upto] += g_shift.to(self.anchors.means)
        self.stats.shift_means(g_shift if self.feature_map is None else
                               weights @ (self._map(g_after) - self._map(g_before)))
        self.refresh()
        return float(g_shift.norm(dim=-1).mean())

    @torch.no_grad()
    def compensate_affine(self, before: torch.Tensor, after: torch.Tensor, upto: int, ridge: float) -> float:
        """The affine drift of g (`methods.drift`) on every stored class's statistics (all are old: the task's
        own are fitted after); returns the mean shift of the class means of g."""
        if self.feature_map is not None:
            raise ValueError("drift 'affine' needs the head on g itself: a random feature map is not affine")
        if upto == 0:
            return 0.0
        assert upto == self.num_classes, "drift is compensated before the task's own classes are fitted"
        means = self.stats.means
        self.stats.map_affine(*affine_drift(self.embed(before), self.embed(after), ridge))
        self.refresh()
        return float((self.stats.means - means).norm(dim=-1).mean())

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(self.lift(features), self.weight, self.bias)

    def export_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, b) for logits = lift(f) W^T + b (= normalize(f) W^T + b without a feature map)."""
        return self.weight.clone(), self.bias.clone()

    def stored_numel(self) -> int:
        """Numbers stored to predict: W, b and the feature map (the statistics and the class means of g are only
        needed to learn more classes)."""
        extra = 0 if self.feature_map is None else self.feature_map.stored_numel()
        return self.weight.numel() + self.bias.numel() + extra

    def checkpoint_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        s = self.stats
        tensors = {"lda.sums": s.sums, "lda.counts": s.counts, "lda.scatter": s.scatter}
        if self.feature_map is not None and self.anchors is not None:
            tensors |= {"lda.anchors": self.anchors.means, "lda.feature_weight": self.feature_map.weight,
                        "lda.feature_offset": self.feature_map.offset}
        return {"lda_classes": s.num_classes}, tensors

    def load_checkpoint_state(self, structure: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.stats.resize_to(structure["lda_classes"])
        for name in ("sums", "counts", "scatter"):
            getattr(self.stats, name).copy_(tensors[f"lda.{name}"])
        if self.feature_map is not None and self.anchors is not None:
            self.anchors.resize_to(structure["lda_classes"])
            self.anchors.means.copy_(tensors["lda.anchors"])
            self.feature_map.weight.copy_(tensors["lda.feature_weight"])
            self.feature_map.offset.copy_(tensors["lda.feature_offset"])
        if self.num_classes:
            self.refresh()


class RidgeHead(LDAHead):
    """Ridge regression onto one-hot targets from the same statistics (RanPAC's head): `solve` is the ridge rule,
    the bias is 0 (`priors` does not apply: the targets already weigh each class by p_c)."""

    def __init__(self, dim: int, shrinkage: float, feature_map: RandomFeatures | None = None) -> None:
        super().__init__(dim, shrinkage, "uniform", feature_map)

    def solve(self) -> tuple[torch.Tensor, torch.Tensor]:
        counts = self.stats.counts
        weight = ridge_weights(self.stats.means, self.stats.covariance(), counts / counts.sum(),
                               float(self.shrinkage))
        return weight, torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)

    def fit_report(self) -> dict[str, Any]:
        """Nothing: the ridge penalty is the configured one."""
        return {}
