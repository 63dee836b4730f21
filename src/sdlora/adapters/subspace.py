"""Input subspaces for InfLoRA (Liang and Li, CVPR 2024): covariances, the designed A, DualGPM bookkeeping.

For one adapted Linear with inputs x (tokens, `in` wide) over a task's data:

    C = (1/N) sum_tokens x x^T                 (in x in; padding tokens masked out for text)
    G = C @ C   (`spectrum: official`: the released code treats C itself as the representation matrix)
        C       (`spectrum: paper`: G = H H^T / N for the representation matrix H = [x_1 ... x_N])
    M           orthonormal basis (in x m) of the earlier tasks' input subspace (DualGPM), P = I - M M^T

* A (down, r x in): the top-r eigenvectors of P G P, computed inside the complement of M (Q^T G Q with Q an
  orthonormal basis of span(M)^perp), so A M = 0 up to rounding even when G is rank-deficient; official
  scale 1/sqrt(3). In the released code A = top-r left singular vectors of P C, i.e. eigenvectors of P C^2 P.
* DualGPM after the task (GPM's criterion): the energy ratios are eigenvalues of G over trace(G);
  first task: keep the top max(1, #{cumsum < threshold}) eigenvectors of G; later tasks: the part of G
  already in M counts as captured, then eigenvectors of P G P are appended until the captured energy reaches
  the threshold. The released code's switch to storing the complement once m > in/2 ('retain') represents
  the same projector, so M is kept as is here (capped at `in` columns).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from sdlora.collectives import all_reduce_sum

SPECTRA: dict[str, Callable[[Tensor], Tensor]] = {
    "official": lambda c: c @ c,
    "paper": lambda c: c,
}


def token_mask(inputs: Any) -> Tensor | None:
    """The attention mask of a tokenised text batch (1 = real token), else None (images: every token)."""
    if isinstance(inputs, dict) and "attention_mask" in inputs:
        return inputs["attention_mask"]
    return None


class CovarianceCollector:
    """Forward pre-hooks on Linear layers that sum x x^T over (unmasked) input tokens, in float64.

    Set `mask` to the batch's [batch, tokens] token mask before each forward (None: all tokens).
    """

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self.mask: Tensor | None = None
        self.handles = [m.register_forward_pre_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach()
            if self.mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(self.mask.shape):
                x = x[self.mask.to(x.device).bool()]
            x = x.reshape(-1, x.shape[-1]).double()
            gram = x.T @ x
            self.sums[name] = self.sums[name] + gram if name in self.sums else gram
            self.counts[name] = self.counts.get(name, 0) + x.shape[0]

        return hook

    def covariances(self) -> dict[str, Tensor]:
        """C per module; in a multi-process run the sums and counts of every rank's shard are added first."""
        out = {}
        for name in sorted(self.sums):  # the same order on every rank
            total = all_reduce_sum(self.sums[name])
            count = all_reduce_sum(torch.tensor([self.counts[name]], dtype=torch.float64, device=total.device))
            out[name] = total / max(float(count), 1.0)
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@torch.no_grad()
def collect_covariances(modules: Mapping[str, nn.Module], run: Callable[[Any], Any],
                        batches: Iterable[Any]) -> dict[str, Tensor]:
    """C per module from `run(inputs)` over `batches` of inputs (already on the device)."""
    collector = CovarianceCollector(modules)
    try:
        for inputs in batches:
            collector.mask = token_mask(inputs)
            run(inputs)
    finally:
        collector.remove()
    return collector.covariances()


def complement_basis(basis: Tensor, dim: int) -> Tensor:
    """An orthonormal basis (dim x (dim - m)) of the orthogonal complement of span(basis) (dim x m)."""
    if basis.shape[1] == 0:
        return torch.eye(dim, dtype=torch.float64, device=basis.device)
    u, _, _ = torch.linalg.svd(basis.double(), full_matrices=True)
    return u[:, basis.shape[1]:]


def _sorted_eigh(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (descending, clamped at 0) and eigenvectors of a symmetric PSD matrix."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return values.flip(0).clamp_min(0), vectors.flip(1)


def design_down(gram: Tensor, basis: Tensor, rank: int) -> Tensor:
    """A (rank x in, float64, orthonormal rows): top eigenvectors of P G P inside span(basis)^perp.

    Rows beyond the complement's dimension (in - m < rank) are zero.
    """
    dim = gram.shape[0]
    q = complement_basis(basis, dim)
    _, vectors = _sorted_eigh(q.T @ gram.double() @ q)
    k = min(rank, vectors.shape[1])
    down = torch.zeros(rank, dim, dtype=torch.float64, device=gram.device)
    down[:k] = (q @ vectors[:, :k]).T
    return down


def update_basis(basis: Tensor, gram: Tensor, threshold: float) -> Tensor:
    """DualGPM: grow the orthonormal basis (in x m) so that it captures `threshold` of G's energy."""
    dim = gram.shape[0]
    gram = gram.double()
    total = float(torch.trace(gram))
    if total <= 0:
        return basis
    if basis.shape[1] == 0:
        values, vectors = _sorted_eigh(gram)
        ratios = values / total
        keep = max(int((torch.cumsum(ratios, 0) < threshold).sum()), 1)
        return vectors[:, :keep]
    if basis.shape[1] >= dim:
        return basis
    q = complement_basis(basis, dim)
    values, vectors = _sorted_eigh(q.T @ gram @ q)
    captured = 1.0 - float(values.sum()) / total
    keep = 0
    for ratio in (values / total).tolist():
        if captured >= threshold:
            break
        captured += ratio
        keep += 1
    if keep == 0:
        return basis
    grown = torch.cat([basis.double(), q @ vectors[:, :keep]], 1)
    return grown[:, :dim]


def threshold_for_task(task: int, num_tasks: int, start: float, end: float) -> float:
    """InfLoRA's schedule: lamb + (lame - lamb) * task / num_tasks (0-indexed task)."""
    return start + (end - start) * task / max(num_tasks, 1)
