"""Eq. 4 of the paper for one adapted matrix, written out densely: the reference every kernel is tested against.

    W - W0 = sum_{k<t} alpha_k U_k D_k / n_k  +  alpha_t c_t U_t D_t

with, by `current_mode` (docs/sdlora.md has the timelines):

    n_k = norm(U_k, D_k)   official (once a later task has started; the newest stored term waits until then),
                           paper
    n_k = 1                continuous; official for the newest stored term until the next task starts
    c_t = 1 / norm(U_t, D_t) in paper mode, else 1
    norm(U, D) = ||U D||_F (`product`, the paper) or ||U||_F ||D||_F (`factors`, the official code);
    a zero direction (U = 0) divides by 1.

Dense float64 products and one Python loop over tasks: slow and obviously right, which is the point. The
fast paths (`norms`, `layer.DirectionBank.terms`, `kernels`) must agree with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def dense_norm(up: Tensor, down: Tensor, norm: str) -> Tensor:
    """norm(U, D) from dense products; 1 for a zero direction."""
    value = torch.linalg.matrix_norm(up @ down) if norm == "product" else \
        torch.linalg.matrix_norm(up) * torch.linalg.matrix_norm(down)
    return value if value > 0 else torch.ones_like(value)


def dense_update(stored: Sequence[tuple[Tensor, Tensor]], alphas: Sequence[float] | Tensor, *, mode: str,
                 norm: str, current: tuple[Tensor, Tensor] | None = None,
                 newest_normalised: bool | None = None) -> Tensor:
    """W - W0 of one matrix (out x in, float64) from its stored (U_k, D_k), the magnitudes and the current (U_t, D_t).

    `alphas[k]` multiplies stored task k and `alphas[len(stored)]` the current direction. `newest_normalised`
    (official mode only): whether the newest stored term has been normalised yet, i.e. whether a task has
    started since it ended; default: exactly when a current direction is open. Differentiable: with magnitudes
    and current factors that require grad, autograd through this function is the reference gradient.
    """
    if newest_normalised is None:
        newest_normalised = current is not None
    first = stored[0] if stored else current
    assert first is not None, "dense_update needs stored or current factors"
    out, fan_in = first[0].shape[0], first[1].shape[1]
    delta = torch.zeros(out, fan_in, dtype=torch.float64)
    for k, (up, down) in enumerate(stored):
        up, down = up.double(), down.double()
        newest = k == len(stored) - 1
        if mode == "continuous" or (mode == "official" and newest and not newest_normalised):
            n_k = torch.ones((), dtype=torch.float64)
        else:
            n_k = dense_norm(up, down, norm)
        delta = delta + alphas[k] * (up @ down) / n_k
    if current is not None:
        up, down = current[0].double(), current[1].double()
        c_t = 1.0 / dense_norm(up, down, norm) if mode == "paper" else 1.0
        delta = delta + alphas[len(stored)] * c_t * (up @ down)
    return delta
