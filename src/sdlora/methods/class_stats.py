"""Per-class statistics of features (Gaussian or multi-centroid), pseudo-features drawn from them, and
classifier alignment.

Only the statistics are kept (no samples): for class c with training features f_1..f_n,

    mu_c = (1/n) sum_i f_i                     Sigma_c = (1/(n-1)) sum_i (f_i - mu_c)(f_i - mu_c)^T + eps I
    kind 'variance' keeps only the diagonal of Sigma_c (D numbers per class instead of D^2)
    pseudo-feature of class c:  h = mu_c + L_c z,  z ~ N(0, I),  L_c L_c^T = Sigma_c   (Cholesky)

`PooledGaussians` keeps what a shared-covariance classifier (LDA, `sdlora.methods.lda`) needs, as running sums:

    n_c, s_c = sum_{i in c} f_i  (per class)      W = sum_c sum_{i in c} (f_i - mu_c)(f_i - mu_c)^T  (one D x D)
    mu_c = s_c / n_c            S = W / N,  N = sum_c n_c  (the pooled within-class covariance, ddof 0)

each task adding its classes' n_c, s_c and their within-class scatter, so the result is that of all data at once
whatever the class order (D^2 + C (D + 1) numbers instead of C D^2).

Kind 'multi_centroid' (`ClassMultiCentroids`, HiDe-Prompt's 'multi-centroid') splits each class into K
clusters by k-means (`sdlora.methods.kmeans`) and keeps per cluster k its mean and per-dimension variance
(ddof 0); a cluster whose variance is 0 (its points coincide) is skipped, every other one gives pseudo-features
h = mu_ck + sqrt(var_ck + eps) z.

`align_classifier` is classifier alignment (HiDe-Prompt's task-adaptive prediction, SLCA's CA): a classifier
retrained by SGD on pseudo-features of every seen class, with no data of earlier tasks.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from sdlora.methods.kmeans import kmeans
from sdlora.methods.options import StatsKind


def class_rows(features: torch.Tensor, labels: torch.Tensor, c: int) -> torch.Tensor:
    """The features of class `c` in float64; a ValueError when it has none."""
    rows = features[labels == c].double()
    if rows.shape[0] == 0:
        raise ValueError(f"no training samples for class {c}")
    return rows


class ClassGaussians(nn.Module):
    """Buffers `means` [C, D] and `spread` ([C, D, D] covariances, or [C, D] variances with kind='variance')."""

    means: torch.Tensor
    spread: torch.Tensor

    def __init__(self, dim: int, kind: StatsKind = "covariance", eps: float = 1e-4) -> None:
        super().__init__()
        if kind not in ("covariance", "variance"):
            raise ValueError(f"ClassGaussians holds 'covariance' or 'variance', not {kind!r} (see class_statistics)")
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
    def fit(self, features: torch.Tensor, labels: torch.Tensor, low: int, high: int,
            generator: torch.Generator | None = None) -> None:
        """Set the statistics of classes [low, high) from their features (computed in float64; no randomness,
        `generator` is unused)."""
        if self.num_classes < high:
            grown = ClassGaussians(self.dim, self.kind, self.eps).to(self.means.device)
            grown.resize_to(high)
            grown.means[: self.num_classes] = self.means
            grown.spread[: self.num_classes] = self.spread
            self.means, self.spread = grown.means, grown.spread
        eye = torch.eye(self.dim, dtype=torch.float64, device=features.device)
        for c in range(low, high):
            rows = class_rows(features, labels, c)
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

    def anchors(self, upto: int) -> torch.Tensor:
        """The class means of classes [0, upto) [upto, D] (HiDe-Prompt's contrastive term pushes features away)."""
        return self.means[:upto]

    #: mu_c of classes [0, upto) (where drift compensation weighs a class's samples from): one Gaussian per class,
    #: so its anchors
    class_means = anchors

    @torch.no_grad()
    def shift_means(self, shift: torch.Tensor) -> None:
        """mu_c += shift_c for the first shift.shape[0] classes (drift compensation; the spread is kept)."""
        self.means[: shift.shape[0]] += shift.to(self.means)

    def pool(self, upto: int, per_component: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels, components) of an alignment epoch's pool: `per_component` entries per class of [0, upto)
        (the component of a Gaussian is its class)."""
        labels = torch.arange(upto, device=self.means.device).repeat_interleave(per_component)
        return labels, labels

    def sample(self, labels: torch.Tensor, factors: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One pseudo-feature per entry of `labels` (`factors` from `factors()`)."""
        z = torch.randn(labels.shape[0], self.dim, generator=generator, device=labels.device)
        out = torch.empty_like(z)
        for c in labels.unique().tolist():
            rows = labels == c
            spread = z[rows] * factors[c] if self.kind == "variance" else z[rows] @ factors[c].T
            out[rows] = self.means[c] + spread
        return out


class PooledGaussians(nn.Module):
    """Running sums for class means and one shared covariance: `sums` [C, D], `counts` [C], `scatter` [D, D]
    (float64, on the model's device). Classes arrive once each (class-incremental); nothing is kept per sample."""

    sums: torch.Tensor
    counts: torch.Tensor
    scatter: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("sums", torch.zeros(0, dim, dtype=torch.float64))
        self.register_buffer("counts", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("scatter", torch.zeros(dim, dim, dtype=torch.float64))

    @property
    def num_classes(self) -> int:
        return self.sums.shape[0]

    def resize_to(self, num_classes: int) -> None:
        """Zeroed buffers for `num_classes` classes (before loading a checkpoint)."""
        device = self.sums.device
        self.sums = torch.zeros(num_classes, self.dim, dtype=torch.float64, device=device)
        self.counts = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.scatter = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=device)

    @torch.no_grad()
    def fit(self, features: torch.Tensor, labels: torch.Tensor, low: int, high: int) -> None:
        """Add classes [low, high) from their features: n_c, s_c and sum_i (f_i - mu_c)(f_i - mu_c)^T (float64).
        A class that already has statistics is a ValueError (its scatter would be centred on the wrong mean)."""
        if self.num_classes < high:
            sums, counts = self.sums, self.counts
            self.sums = torch.zeros(high, self.dim, dtype=torch.float64, device=sums.device)
            self.counts = torch.zeros(high, dtype=torch.float64, device=counts.device)
            self.sums[: sums.shape[0]], self.counts[: counts.shape[0]] = sums, counts
        seen = (self.counts[low:high] > 0).nonzero().flatten() + low
        if seen.numel():
            raise ValueError(f"classes {seen.tolist()} already have statistics (each class is learned once)")
        for c in range(low, high):
            rows = class_rows(features, labels, c).to(self.sums.device)
            centred = rows - rows.mean(0)
            self.sums[c] = rows.sum(0)
            self.counts[c] = rows.shape[0]
            self.scatter += centred.T @ centred

    @property
    def means(self) -> torch.Tensor:
        """mu_c = s_c / n_c [C, D] (float64)."""
        return self.sums / self.counts[:, None]

    def covariance(self) -> torch.Tensor:
        """S = W / N, the pooled within-class covariance [D, D] (float64)."""
        return self.scatter / self.counts.sum()

    @torch.no_grad()
    def shift_means(self, shift: torch.Tensor) -> None:
        """mu_c += shift_c for the first shift.shape[0] classes (s_c += n_c shift_c); the scatter is kept."""
        upto = shift.shape[0]
        self.sums[:upto] += self.counts[:upto, None] * shift.to(self.sums)

    @torch.no_grad()
    def map_affine(self, p: torch.Tensor, b: torch.Tensor) -> None:
        """Every stored class through f -> f P + b: s_c -> s_c P + n_c b, W -> P^T W P (`methods.drift`)."""
        p, b = p.to(self.sums), b.to(self.sums)
        self.sums = self.sums @ p + self.counts[:, None] * b
        self.scatter = p.T @ self.scatter @ p


class ClassMultiCentroids(nn.Module):
    """HiDe-Prompt's 'multi-centroid' statistics: K = `centroids` k-means clusters per class, each with its mean
    and per-dimension variance (np.var, ddof 0), in fixed-shape buffers `means` [C, K, D], `variances` [C, K, D]
    and `present` [C, K] (the cluster holds at least one training feature; absent clusters are zero).

    Release: engines/hide_promtp_wtp_and_tap_engine.py:398-415 and engines/hide_tii_engine.py:185-202 fit
    `KMeans(n_clusters=n_centroids)` on the class's gathered features; :459-470 and :324-335 skip a cluster
    whose variance mean is 0 and draw from N(mean, diag(var) + 1e-4 I) for each other one.

    A class with fewer features than K gets one cluster per feature (the release's scikit-learn refuses it), and
    duplicate features can leave clusters absent; a cluster of one feature, or of equal ones, has variance 0
    (set exactly, not left to rounding) and gives no pseudo-features, as in the release, so a class made only of
    such clusters (e.g. with no more features than clusters) is left out of alignment: `fit` warns then."""

    kind = "multi_centroid"
    means: torch.Tensor
    variances: torch.Tensor
    present: torch.Tensor

    def __init__(self, dim: int, centroids: int = 10, eps: float = 1e-4) -> None:
        super().__init__()
        if centroids < 1:
            raise ValueError(f"multi_centroid statistics need centroids >= 1, got {centroids}")
        self.dim, self.centroids, self.eps = dim, centroids, eps
        self.register_buffer("means", torch.zeros(0, centroids, dim))
        self.register_buffer("variances", torch.zeros(0, centroids, dim))
        self.register_buffer("present", torch.zeros(0, centroids, dtype=torch.bool))

    @property
    def num_classes(self) -> int:
        return self.means.shape[0]

    def resize_to(self, num_classes: int) -> None:
        """Zeroed buffers for `num_classes` classes (before loading a checkpoint)."""
        device = self.means.device
        self.means = torch.zeros(num_classes, self.centroids, self.dim, device=device)
        self.variances = torch.zeros(num_classes, self.centroids, self.dim, device=device)
        self.present = torch.zeros(num_classes, self.centroids, dtype=torch.bool, device=device)

    @torch.no_grad()
    def fit(self, features: torch.Tensor, labels: torch.Tensor, low: int, high: int,
            generator: torch.Generator | None = None) -> None:
        """Cluster each class of [low, high) with k-means (float64 on the CPU, seeded from the CPU `generator`,
        consumed class by class) and set its clusters' means and variances."""
        if generator is None:
            raise ValueError("multi_centroid statistics need a CPU generator for k-means")
        if self.num_classes < high:
            old = (self.means, self.variances, self.present)
            self.resize_to(high)
            for new, kept in zip((self.means, self.variances, self.present), old, strict=True):
                new[: kept.shape[0]] = kept
        for c in range(low, high):
            rows = features[labels == c].detach().to("cpu", torch.float64)
            if rows.shape[0] == 0:
                raise ValueError(f"no training samples for class {c}")
            assignment, _ = kmeans(rows, self.centroids, generator)
            means = torch.zeros(self.centroids, self.dim, dtype=torch.float64)
            variances = torch.zeros_like(means)
            present = torch.zeros(self.centroids, dtype=torch.bool)
            for k in assignment.unique().tolist():
                members = rows[assignment == k]
                present[k] = True
                means[k] = members.mean(0)
                if not (members == members[0]).all():  # equal points: exactly 0, as var.mean() == 0 expects
                    variances[k] = members.var(0, unbiased=False)
            self.means[c] = means.to(self.means)
            self.variances[c] = variances.to(self.variances)
            self.present[c] = present.to(self.present.device)
            if not self.sampled(c + 1)[c].any():
                warnings.warn(f"multi_centroid statistics: every cluster of class {c} has zero variance (its "
                              f"{rows.shape[0]} features are too few or equal for {self.centroids} clusters); "
                              "it gets no pseudo-features in alignment", RuntimeWarning, stacklevel=3)

    def sampled(self, upto: int) -> torch.Tensor:
        """[upto, K]: the clusters that give pseudo-features (present, variance mean > 0)."""
        return self.present[:upto] & (self.variances[:upto].mean(-1) > 0)

    def factors(self, upto: int) -> torch.Tensor:
        """Standard deviations sqrt(var + eps) [upto, K, D] (the release's diag(var) + 1e-4 I)."""
        return (self.variances[:upto] + self.eps).sqrt()

    def anchors(self, upto: int) -> torch.Tensor:
        """The present cluster means of classes [0, upto) [m, D] (the release's `orth_loss` stacks every
        cluster mean of the earlier classes)."""
        return self.means[:upto][self.present[:upto]]

    def class_means(self, upto: int) -> torch.Tensor:
        """The mean of each class's present cluster means, classes [0, upto) [upto, D] (cluster sizes are not
        kept, so each present cluster weighs the same)."""
        present = self.present[:upto, :, None].to(self.means)
        return (self.means[:upto] * present).sum(1) / present.sum(1).clamp(min=1)

    @torch.no_grad()
    def shift_means(self, shift: torch.Tensor) -> None:
        """Every present cluster mean of class c moves by shift_c, the first shift.shape[0] classes (drift
        compensation estimates one shift per class; variances are kept, absent clusters stay zero)."""
        upto = shift.shape[0]
        self.means[:upto] += shift.to(self.means)[:, None, :] * self.present[:upto, :, None].to(self.means)

    def pool(self, upto: int, per_component: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels, components) of an alignment epoch's pool: `per_component` entries per sampled cluster of the
        classes [0, upto), the component being c * K + k."""
        components = self.sampled(upto).flatten().nonzero().flatten().repeat_interleave(per_component)
        return components // self.centroids, components

    def sample(self, components: torch.Tensor, factors: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One pseudo-feature per entry of `components` (c * K + k; `factors` from `factors()`)."""
        z = torch.randn(components.shape[0], self.dim, generator=generator, device=components.device)
        return self.means.reshape(-1, self.dim)[components] + z * factors.reshape(-1, self.dim)[components]


ClassStatistics = ClassGaussians | ClassMultiCentroids


def class_statistics(dim: int, kind: StatsKind, eps: float = 1e-4, centroids: int = 10) -> ClassStatistics:
    """The statistics of `kind`: `ClassMultiCentroids` for 'multi_centroid', else `ClassGaussians`."""
    if kind == "multi_centroid":
        return ClassMultiCentroids(dim, centroids, eps)
    return ClassGaussians(dim, kind, eps)


@torch.enable_grad()
def align_classifier(classifier: Callable[[torch.Tensor], torch.Tensor], params: list[nn.Parameter],
                     stats: ClassStatistics, seen: int, steps: int, *, epochs: int, batch_size: int, lr: float,
                     momentum: float, weight_decay: float, generator: torch.Generator) -> float:
    """Retrain `params` of `classifier` on pseudo-features of classes [0, seen); returns the last epoch's mean loss.

    As HiDe-Prompt's `train_task_adaptive_prediction`: SGD with cosine annealing over `epochs`; every epoch
    draws a pool of `batch_size` pseudo-features per component (per seen class for the Gaussians; per sampled
    cluster of each seen class for multi-centroid statistics, so a class with m such clusters has m blocks),
    shuffles it and takes `steps` batches of `batch_size` (the release takes as many batches as there are classes
    in the earlier tasks; the last batch may be short, and fewer batches are taken when the pool runs out, which
    only multi-centroid statistics with many zero-variance clusters can cause); cross-entropy over the seen
    classes' logits. Only the pseudo-features of the batches taken are drawn. `params` train whatever their
    `requires_grad` (frozen old rows included) and get their flags back afterwards."""
    if steps < 1 or epochs < 1:
        return 0.0
    device = stats.means.device
    pool_labels, pool_components = stats.pool(seen, batch_size)
    if pool_labels.shape[0] == 0:
        return 0.0
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    factors = stats.factors(seen)
    loss_sum, batches = 0.0, 0
    with trainable(params):
        for _ in range(epochs):
            order = torch.randperm(pool_labels.shape[0], generator=generator, device=device)[: steps * batch_size]
            labels = pool_labels[order]
            features = stats.sample(pool_components[order], factors, generator)
            loss_sum, batches = 0.0, 0
            for i in range(0, labels.shape[0], batch_size):
                loss = F.cross_entropy(classifier(features[i:i + batch_size])[:, :seen], labels[i:i + batch_size])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum, batches = loss_sum + float(loss.detach()), batches + 1
            schedule.step()
    return loss_sum / batches


@contextmanager
def trainable(params: list[nn.Parameter]) -> Iterator[None]:
    """`params` require grad inside the block (frozen old head rows included) and get their flags back after."""
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
