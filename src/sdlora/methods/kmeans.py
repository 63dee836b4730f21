"""k-means in torch (float64 on the CPU): k-means++ seeding and Lloyd iterations, as scikit-learn's `KMeans`.

HiDe-Prompt's 'multi-centroid' statistics call `sklearn.cluster.KMeans(n_clusters=10)` with scikit-learn 1.0.2
(its requirements.txt); this follows that version's defaults:

    init     greedy k-means++: the first centre uniformly at random; each further centre the best of
             2 + floor(ln k) candidates drawn with probability proportional to the squared distance to the
             nearest chosen centre (best = the lowest potential sum_i min_j ||x_i - c_j||^2 afterwards)
    Lloyd    assign each point to its nearest centre (ties: the lowest index), centre = mean of its points; an
             empty cluster takes the point farthest from its own centre (which leaves its old cluster); stop
             when the assignment repeats, or when sum_j ||c_j^new - c_j||^2 <= tol * mean_d var(x_d) with
             tol = 1e-4, or after max_iter = 300 rounds; without a repeated assignment, one more assignment so
             that the labels match the returned centres
    n_init   10 seedings, the one of lowest inertia kept (1.0.2's default; 1.4 and later seed k-means++ once)

Differences from the release's call: the random numbers come from a torch Generator (deterministic under the
run's seed; the release passes no random_state); scikit-learn 1.0.2 runs Elkan's algorithm, an exact
acceleration of Lloyd's (the same iterates in exact arithmetic); it computes in the data's dtype (float32 in
the release) on centred data, here float64 on the data as given; when several clusters are empty at once they
take the farthest points in decreasing order of distance (scikit-learn's `argpartition` leaves the order open).
Fewer points than clusters, which scikit-learn refuses, gives one cluster per point (k = N). Duplicate points:
as scikit-learn 1.4's fix (PR #28165; 1.0.2 relocates at every round up to max_iter), nothing is relocated
when every point sits on its centre, and a cluster left empty sits on the largest one's centre; so with fewer
distinct points than clusters some clusters end with no label (callers read the labels; the release's
np.mean of such a cluster is NaN).
"""

from __future__ import annotations

import math

import torch

MAX_ITER = 300
TOL = 1e-4
N_INIT = 10  # scikit-learn 1.0.2


def squared_distances(x: torch.Tensor, centres: torch.Tensor, x_norms: torch.Tensor | None = None) -> torch.Tensor:
    """||x_i - c_j||^2 [N, K] as ||x||^2 - 2 x.c + ||c||^2, clipped at 0 (as scikit-learn's); `x_norms` =
    ||x_i||^2 [N, 1] if known."""
    x_norms = (x * x).sum(1, keepdim=True) if x_norms is None else x_norms
    return (x_norms - 2 * x @ centres.T + (centres * centres).sum(1)).clamp_min_(0)


def kmeans_plusplus(x: torch.Tensor, k: int, generator: torch.Generator,
                    trials: int | None = None) -> torch.Tensor:
    """Indices [k] of the rows of `x` chosen as initial centres (greedy k-means++)."""
    n = x.shape[0]
    trials = 2 + int(math.log(k)) if trials is None else trials
    norms = (x * x).sum(1, keepdim=True)
    first = int(torch.randint(n, (1,), generator=generator))
    chosen = [first]
    closest = squared_distances(x, x[first:first + 1], norms)[:, 0]
    potential = closest.sum()
    for _ in range(1, k):
        draws = torch.rand(trials, generator=generator, dtype=x.dtype) * potential
        candidates = torch.searchsorted(closest.cumsum(0), draws).clamp_max_(n - 1)
        distances = torch.minimum(closest, squared_distances(x, x[candidates], norms).T)  # [trials, N]
        potentials = distances.sum(1)
        best = int(potentials.argmin())
        potential, closest = potentials[best], distances[best]
        chosen.append(int(candidates[best]))
    return torch.tensor(chosen)


def lloyd(x: torch.Tensor, centres: torch.Tensor, tol: float,
          max_iter: int = MAX_ITER) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(labels [N], centres [K, D], inertia) from Lloyd iterations started at `centres`."""
    k = centres.shape[0]
    norms = (x * x).sum(1, keepdim=True)
    previous: torch.Tensor | None = None
    converged = False
    for _ in range(max_iter):
        distances = squared_distances(x, centres, norms)
        labels = distances.argmin(1)
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        empty = (counts == 0).nonzero().flatten().tolist()
        own = distances.gather(1, labels[:, None])[:, 0]
        if empty and float(own.max()) > 0:  # scikit-learn's _relocate_empty_clusters_dense
            for j, far in zip(empty, own.topk(len(empty)).indices.tolist(), strict=True):
                old = int(labels[far])
                sums[old] -= x[far]
                counts[old] -= 1
                sums[j], counts[j] = x[far], 1
        new = sums / torch.where(counts > 0, counts, torch.ones_like(counts))[:, None]
        new[counts == 0] = new[counts.argmax()].clone()  # scikit-learn >= 1.4's _average_centers
        shift = float(((new - centres) ** 2).sum())
        centres = new
        if previous is not None and torch.equal(labels, previous):
            converged = True
            break
        if shift <= tol:
            break
        previous = labels
    distances = squared_distances(x, centres, norms)
    if not converged:
        labels = distances.argmin(1)
    inertia = float(distances.gather(1, labels[:, None]).sum())
    return labels, centres, inertia


def kmeans(x: torch.Tensor, k: int, generator: torch.Generator, *, n_init: int = N_INIT,
           max_iter: int = MAX_ITER, tol: float = TOL) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels [N], centres [min(k, N), D]) of `x` [N, D]: the best of `n_init` k-means++ seedings by inertia.

    Runs in float64 on the CPU (`generator` must be a CPU generator), so every process and device that holds the
    same rows and the same generator state gets the same clustering. With N < k there are N clusters; with
    duplicate points some of the min(k, N) clusters may hold no label."""
    if k < 1 or n_init < 1 or max_iter < 1:
        raise ValueError(f"kmeans: k, n_init and max_iter must be >= 1, got {k}, {n_init}, {max_iter}")
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"kmeans: needs a non-empty [N, D] tensor, got shape {tuple(x.shape)}")
    if generator.device.type != "cpu":
        raise ValueError(f"kmeans runs on the CPU and needs a CPU generator, got one on {generator.device}")
    x = x.detach().to("cpu", torch.float64)
    k = min(k, x.shape[0])
    threshold = float(x.var(0, unbiased=False).mean()) * tol
    best: tuple[torch.Tensor, torch.Tensor, float] | None = None
    for _ in range(n_init):
        run = lloyd(x, x[kmeans_plusplus(x, k, generator)], threshold, max_iter)
        if best is None or run[2] < best[2]:
            best = run
    assert best is not None
    return best[0], best[1]
