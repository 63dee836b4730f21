"""Normalisers n(U, D) of a low-rank direction U D (U: out x r, D: r x in), batched over leading dims.

``product``: ||U D||_F (the paper's dir(A, B) = AB / ||AB||_F). It needs no dense product:
    ||U D||_F^2 = trace(D^T U^T U D) = trace((U^T U)(D D^T)) = sum((U^T U) * (D D^T))
(both r x r Gram matrices are symmetric), so the cost is r^2 (out + in), never out x in.
``factors``: ||U||_F * ||D||_F (the official code; an upper bound of ||U D||_F).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

NormFn = Callable[[Tensor, Tensor], Tensor]


def lowrank_inner(up_a: Tensor, down_a: Tensor, up_b: Tensor, down_b: Tensor) -> Tensor:
    """<U_a D_a, U_b D_b>_F = trace((U_a^T U_b)(D_b D_a^T)), from r_a x r_b products only."""
    left = up_a.transpose(-1, -2) @ up_b  # r_a x r_b
    right = down_a @ down_b.transpose(-1, -2)  # r_a x r_b  (= (D_b D_a^T)^T)
    return (left * right).sum((-1, -2))


def product_norm(up: Tensor, down: Tensor) -> Tensor:
    """||U D||_F = sqrt(trace((U^T U)(D D^T))) without forming U D."""
    return lowrank_inner(up, down, up, down).clamp_min(0).sqrt()


def factors_norm(up: Tensor, down: Tensor) -> Tensor:
    """||U||_F * ||D||_F (official code)."""
    return up.flatten(-2).norm(dim=-1) * down.flatten(-2).norm(dim=-1)


#: the config checks names against `sdlora.adapters.choices.NORM_NAMES` (no torch; a test keeps the two equal)
NORMS: dict[str, NormFn] = {"product": product_norm, "factors": factors_norm}


def safe_divisor(norm: Tensor) -> Tensor:
    """A norm used as a divisor: a zero direction (norm 0, e.g. U never left its zero init) divides by 1."""
    return torch.where(norm > 0, norm, torch.ones_like(norm))
