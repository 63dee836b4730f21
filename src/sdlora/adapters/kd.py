"""SD-LoRA-KD (docs/sdlora.md "Variants"): least-squares fit of the new direction on the stored ones, from r x r
products.

The fitted objects are the terms that the model multiplies by the magnitudes, E_k = U_k D_k / n_k per matrix.
Gram entries come from <U_a D_a, U_b D_b>_F = trace((U_a^T U_b)(D_b D_a^T)): with all rank columns of a
matrix stacked (U: w x R', D: R' x in), A = U^T U and B = D D^T are R' x R' and
    Gram[a, b] = sum_{i in a, j in b} A_ij B_ij
so no out x in product is ever formed. The fit solves Gram_old c = g (pseudo-inverse: old directions may be
dependent) and reports the relative residual ||E_t - sum_k c_k E_k|| / ||E_t|| (the paper's residual of a
unit-norm direction). Everything is float64: tau = 9e-4 is below float32's resolution of the residual.

Joint fit (default): the Gram matrices of all adapted matrices are summed, i.e. every matrix's E_k is one
block of one long vector per task, and one coefficient per old task comes out. That is the reading consistent
with SD-LoRA's parameterisation, where one magnitude per task is shared by all matrices: absorbing
alpha_k += alpha_t c_k keeps one scalar per task (and the absorbed part keeps training with alpha_k).
Per-layer fit: one coefficient vector per matrix, stored as fixed per-matrix magnitude offsets; it absorbs
more often but leaves the one-magnitude-per-task model.

The test (`kd_residual`): ``relative`` (default) compares the relative residual above with tau (< tau). It is
the residual of the terms the model actually multiplies, so it means the same in every mode (in `continuous`
the stored terms are unnormalised, and an absolute residual would depend on their scale). ``paper`` is Eq. 7
read literally: every matrix's direction unit-normalised (dir_k = U_k D_k / ||U_k D_k||_F, from the Gram:
G_ij / sqrt(G_ii G_jj)), the joint fit averages the M matrices' Grams (so the new direction has unit norm),
and the absolute residual is compared with tau (<= tau). Either way the absorbed coefficients come from the
fit of the model's own terms, so absorption preserves the trained function.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


@torch.no_grad()
def slice_grams(past_up: Tensor, past_down: Tensor, col_task: Tensor, divisor: Tensor,
                cur_up: Tensor, cur_down: Tensor, cur_divisor: Tensor) -> Tensor:
    """Gram matrices [S, T+1, T+1] (float64) of the stored terms (slots 0..T-1) and the new one (slot T)."""
    num_slots = divisor.shape[1] + 1
    up = torch.cat([past_up, cur_up], 2).double()  # [S, w, R']
    down = torch.cat([past_down, cur_down], 1).double()  # [S, R', in]
    slot = torch.cat([col_task, torch.full((cur_down.shape[1],), num_slots - 1, device=col_task.device)])
    inv = torch.cat([divisor.double(), cur_divisor.double()[:, None]], 1).reciprocal()  # [S, T+1]
    col_scale = inv.index_select(1, slot)  # [S, R']
    up = up * col_scale[:, None, :]
    entry = (up.transpose(1, 2) @ up) * (down @ down.transpose(1, 2))  # [S, R', R']
    onehot = torch.nn.functional.one_hot(slot, num_slots).double()  # [R', T+1]
    return onehot.t() @ entry @ onehot


def unit_grams(gram: Tensor) -> Tensor:
    """Gram matrices of the unit-normalised terms E_k / ||E_k||_F (the paper's dir_k), from the Gram alone."""
    norms = gram.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()
    inv = torch.where(norms > 0, norms.reciprocal(), torch.zeros_like(norms))
    return gram * inv[..., :, None] * inv[..., None, :]


def least_squares(gram: Tensor, live: list[int], relative: bool = True) -> tuple[list[float], float]:
    """Coefficients c (one per stored slot; 0 for slots not in `live`) and the residual of the new term.

    relative: ||E_t - sum_k c_k E_k|| / ||E_t||; otherwise the absolute residual ||E_t - sum_k c_k E_k||.
    """
    new = gram.shape[0] - 1
    coeffs = [0.0] * new
    gtt = float(gram[new, new])
    if not live:
        return coeffs, (1.0 if relative else math.sqrt(max(gtt, 0.0))) if gtt > 0 else 0.0
    idx = torch.tensor(live)
    g_old = gram[idx][:, idx]
    g = gram[idx, new]
    c = torch.linalg.pinv(g_old, hermitian=True) @ g
    res2 = gtt - 2 * float(c @ g) + float(c @ g_old @ c)
    if not relative:
        residual = math.sqrt(max(res2, 0.0))
    else:
        residual = math.sqrt(max(res2, 0.0) / gtt) if gtt > 0 else 0.0
    for k, value in zip(live, c.tolist()):
        coeffs[k] = value
    return coeffs, residual
