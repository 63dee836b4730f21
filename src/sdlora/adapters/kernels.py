"""Forward/backward strategies of one adapted Linear (weight W0: out x in) with S equal-width output slices.

Per slice s (rows a:b) the layer computes  y[:, a:b] = x W0[a:b]^T + (x Dall_s^T * scale_s) Uall_s^T
where Dall_s = [past D's; current D] ([R' x in]), Uall_s = [past U's, current U] ([w x R']) and scale_s holds
alpha_k / n_k for every rank column (gathered per step, since the alphas train). Three exact strategies:

``factored``  two skinny matmuls through the factors (all slices share ONE down matmul); autograd backward.
              ~ 2 M R' (in + w) MACs per slice for forward + backward (M = tokens).
``fused_proj`` fold the adapter into the weight (W = W0 + sum of terms, w R' in MACs, independent of M), run
              ONE plain linear, and in backward get the trainable gradients from the projections
              P = x Dall^T, Q = g Uall: d alpha-column = sum_m P * Q. ~ M R' (in + w) per slice, half of
              factored.
``fused_wgrad`` same forward; backward forms the slice weight gradient G = g_s^T x (M w in) and contracts it
              with the factors (G D^T, U^T G: w in R'). Cheaper than fused_proj once R' > w in / (in + w).

The exact gradient of the magnitudes needs either P and Q or G, so min(R' (in + w), w in) MACs per token and
slice is a floor for any exact method; ``auto`` picks the cheapest strategy per call from these counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class Terms:
    """What one layer adds, per slice: past directions (frozen) and the current one (trainable)."""

    past_scale: Tensor | None = None  # [S, R]  alpha_k / n_k per rank column
    past_down: Tensor | None = None  # [S, R, in]
    past_up: Tensor | None = None  # [S, w, R]
    cur_scale: Tensor | None = None  # [S]     alpha_t * c_t
    cur_down: Tensor | None = None  # [S, r, in]
    cur_up: Tensor | None = None  # [S, w, r]

    @property
    def has_past(self) -> bool:
        return self.past_down is not None and self.past_down.shape[1] > 0

    @property
    def has_current(self) -> bool:
        return self.cur_down is not None

    def stacked(self) -> tuple[Tensor, Tensor, Tensor]:
        """(downs [S, R', in], ups [S, w, R'], scales [S, R']) with past columns first, then current."""
        parts = []
        if self.has_past:
            parts.append((self.past_down, self.past_up, self.past_scale))
        if self.has_current:
            r = self.cur_down.shape[1]  # type: ignore[union-attr]
            scale = self.cur_scale[:, None].expand(-1, r)  # type: ignore[index]
            parts.append((self.cur_down, self.cur_up, scale))
        if len(parts) == 1:
            return parts[0]  # type: ignore[return-value]
        (pd, pu, ps), (cd, cu, cs) = parts
        return torch.cat([pd, cd], 1), torch.cat([pu, cu], 2), torch.cat([ps, cs], 1)  # type: ignore[list-item]


Slices = tuple[tuple[int, int], ...]


@torch.no_grad()
def add_delta_(weight: Tensor, terms: Terms, slices: Slices) -> Tensor:
    """weight[a:b] += sum of the terms of slice s (dense, exact); returns `weight`."""
    for s, (a, b) in enumerate(slices):
        rows = weight[a:b]
        if terms.has_past:
            rows.addmm_(terms.past_up[s] * terms.past_scale[s], terms.past_down[s])  # type: ignore[index]
        if terms.has_current:
            rows.addmm_(terms.cur_up[s] * terms.cur_scale[s], terms.cur_down[s])  # type: ignore[index]
    return weight


def factored(x: Tensor, weight: Tensor, bias: Tensor | None, terms: Terms, slices: Slices) -> Tensor:
    y = F.linear(x, weight, bias)
    downs, ups, scales = terms.stacked()
    num_slices, cols = scales.shape
    h = F.linear(x.reshape(-1, x.shape[-1]), downs.reshape(num_slices * cols, -1))
    h = h * scales.reshape(1, -1).to(h.dtype)
    flat = y.view(-1, y.shape[-1])
    for s, (a, b) in enumerate(slices):
        flat[:, a:b].addmm_(h[:, s * cols:(s + 1) * cols], ups[s].t())
    return y


class _Fused(torch.autograd.Function):
    """y = x (W0 + delta)^T + bias with delta folded in forward; trainable grads from P/Q or from G."""

    @staticmethod
    def forward(ctx, x, weight, bias, past_scale, past_down, past_up,  # type: ignore[override]
                cur_scale, cur_down, cur_up, slices, grad_kind):
        terms = Terms(past_scale, past_down, past_up, cur_scale, cur_down, cur_up)
        merged = add_delta_(weight.detach().clone(), terms, slices)
        ctx.slices, ctx.grad_kind = slices, grad_kind
        ctx.save_for_backward(x, merged, past_scale, past_down, past_up, cur_scale, cur_down, cur_up)
        return F.linear(x, merged, bias)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, merged, ps, pd, pu, cs, cd, cu = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_x = grad_out @ merged if needs[0] else None
        g = grad_out.reshape(-1, grad_out.shape[-1])
        x2 = x.reshape(-1, x.shape[-1])
        has_past = pd is not None and pd.shape[1] > 0
        has_cur = cd is not None
        g_ps = [] if needs[3] and has_past else None
        g_cs = [] if needs[6] and has_cur else None
        g_cd = [] if needs[7] and has_cur else None
        g_cu = [] if needs[8] and has_cur else None
        if ctx.grad_kind == "wgrad":
            for s, (a, b) in enumerate(ctx.slices):
                G = g[:, a:b].t() @ x2  # [w, in]
                if g_ps is not None:
                    g_ps.append(((G @ pd[s].t()) * pu[s]).sum(0))
                if has_cur:
                    ut_g = cu[s].t() @ G  # [r, in]
                    if g_cs is not None:
                        g_cs.append((ut_g * cd[s]).sum())
                    if g_cd is not None:
                        g_cd.append(ut_g * cs[s])
                    if g_cu is not None:
                        g_cu.append((G @ cd[s].t()) * cs[s])
        else:  # proj
            terms = Terms(ps, pd, pu, cs, cd, cu)
            downs, ups, _ = terms.stacked()
            num_slices, cols = downs.shape[0], downs.shape[1]
            R = pd.shape[1] if has_past else 0
            P = x2 @ downs.reshape(num_slices * cols, -1).t()  # [M, S R']
            for s, (a, b) in enumerate(ctx.slices):
                gs = g[:, a:b]
                Ps = P[:, s * cols:(s + 1) * cols]
                Q = gs @ ups[s]  # [M, R']
                if g_ps is not None:
                    g_ps.append((Ps[:, :R] * Q[:, :R]).sum(0))
                if has_cur:
                    Pc, Qc = Ps[:, R:], Q[:, R:]
                    if g_cs is not None:
                        g_cs.append((Pc * Qc).sum())
                    if g_cu is not None:
                        g_cu.append((Pc.t() @ gs).t() * cs[s])  # [r, M] @ [M, w]: the fast layout
                    if g_cd is not None:
                        g_cd.append((Qc.t() @ x2) * cs[s])

        def stack(items: list[Tensor] | None) -> Tensor | None:
            return None if items is None else torch.stack(items)

        return (grad_x, None, None, stack(g_ps), None, None, stack(g_cs), stack(g_cd), stack(g_cu),
                None, None)


def _fused(grad_kind: str) -> Callable[..., Tensor]:
    def run(x: Tensor, weight: Tensor, bias: Tensor | None, terms: Terms, slices: Slices) -> Tensor:
        return _Fused.apply(x, weight, bias, terms.past_scale, terms.past_down, terms.past_up,
                            terms.cur_scale, terms.cur_down, terms.cur_up, slices, grad_kind)

    return run


KernelFn = Callable[[Tensor, Tensor, Tensor | None, Terms, Slices], Tensor]
KERNELS: dict[str, KernelFn] = {
    "factored": factored,
    "fused_proj": _fused("proj"),
    "fused_wgrad": _fused("wgrad"),
}


def choose_kernel(tokens: int, in_features: int, out_features: int, num_slices: int, width: int,
                  past_rank: int, cur_rank: int, needs_param_grad: bool, needs_x_grad: bool) -> str:
    """The cheapest exact strategy by multiply-accumulate counts (see the module docstring)."""
    M, S, w, r = tokens, num_slices, width, cur_rank
    Rp = past_rank + cur_rank
    fold = S * w * Rp * in_features + out_features * in_features  # delta into a copy of W0
    if not needs_param_grad:
        factored_cost = S * M * Rp * (in_features + w) + (S * M * Rp * in_features if needs_x_grad else 0)
        return "factored" if factored_cost < fold else "fused_proj"
    cur_grads = S * M * r * (in_features + w)
    costs = {
        "factored": S * M * Rp * (in_features + 2 * w) + cur_grads
        + (S * M * Rp * in_features if needs_x_grad else 0),
        "fused_proj": fold + S * M * Rp * (in_features + w) + cur_grads,
        "fused_wgrad": fold + S * w * in_features * (M + past_rank + 2 * r),
    }
    return min(costs, key=costs.__getitem__)
