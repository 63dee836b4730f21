"""Forward/backward strategies of one adapted Linear (weight W0: out x in) with S equal-width output slices.

Per slice s (rows a:b) the layer computes  y[:, a:b] = x W0[a:b]^T + (x Dall_s^T * scale_s) Uall_s^T
where Dall_s = [past D's; current D] ([R' x in]), Uall_s = [past U's, current U] ([w x R']) and scale_s holds
alpha_k / n_k for every rank column (gathered per step, since the alphas train). Three exact strategies, one
autograd Function (M = tokens; MACs per slice):

``factored``   forward through the factors: P = x Dall^T (ONE matmul for all slices, kept for backward), then
               y_s += (P_s * scale_s) Uall_s^T; backward Q = g_s Uall_s and, if x needs it, (Q * scale) Dall.
               ~ M R' (in + 2 w) (+ M R' in for dL/dx); no weight copy, best for few tokens or tiny R'.
``fused_proj`` fold the adapter into a copy of the weight (w R' in, independent of M) and run ONE plain linear;
               backward recomputes P and forms Q: d alpha-column = sum_m P * Q. ~ M R' (in + w).
``fused_wgrad`` same forward; backward forms the slice weight gradient G = g_s^T x (M w in) and contracts it
               with the factors (G D^T, U^T G: w in R'). Cheaper than fused_proj once R' > w in / (in + w).

The exact gradient of the magnitudes needs either P and Q or G, so min(R' (in + w), w in) MACs per token and
slice is a floor for any exact method; ``auto`` picks the cheapest strategy per call from these counts
(`choose_kernel`). Under no_grad the same forwards run without autograd bookkeeping.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from sdlora.adapters.choices import KERNEL_KINDS


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

    def to(self, dtype: torch.dtype) -> Terms:
        """The same terms in another dtype (float64 for exact merges)."""
        return Terms(*(None if t is None else t.detach().to(dtype) for t in (
            self.past_scale, self.past_down, self.past_up, self.cur_scale, self.cur_down, self.cur_up)))

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


def _factored_forward(x: Tensor, weight: Tensor, bias: Tensor | None, terms: Terms,
                      slices: Slices) -> tuple[Tensor, Tensor]:
    """y = x W0^T + b, then y[:, a:b] += (P_s * scale_s) Uall_s^T with P = x Dall^T (one matmul, all slices)."""
    y = F.linear(x, weight, bias)
    downs, ups, scales = terms.stacked()
    num_slices, cols = scales.shape
    P = F.linear(x.reshape(-1, x.shape[-1]), downs.reshape(num_slices * cols, -1))
    H = P * scales.reshape(1, -1).to(P.dtype)
    flat = y.view(-1, y.shape[-1])
    for s, (a, b) in enumerate(slices):  # in place, so autocast does not cast: y's dtype (bf16 under autocast)
        flat[:, a:b].addmm_(H[:, s * cols:(s + 1) * cols].to(y.dtype), ups[s].t().to(y.dtype))
    return y, P


class _AdaptedLinear(torch.autograd.Function):
    """One adapted Linear; `fold` picks the forward, `grad_kind` ("proj" | "wgrad", the latter folded only).

    Backward, per slice s with g_s = dL/dy[:, a:b]:  d scale_j = sum_m P_mj Q_mj with Q = g_s Uall_s,
    d U_t = c (P_t^T g_s)^T, d D_t = c Q_t^T x  ("proj"); or from G = g_s^T x: d scale_j = u_j^T G d_j,
    d U_t = c G D_t^T, d D_t = c U_t^T G ("wgrad"). dL/dx = g W_eff (folded) or g W0 + (Q * scale) Dall.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, past_scale, past_down, past_up,  # type: ignore[override]
                cur_scale, cur_down, cur_up, slices, fold, grad_kind):
        terms = Terms(past_scale, past_down, past_up, cur_scale, cur_down, cur_up)
        if fold:
            merged = add_delta_(weight.detach().clone(), terms, slices)
            y, kept = F.linear(x, merged, bias), merged
        else:
            y, kept = _factored_forward(x, weight, bias, terms, slices)
        ctx.slices, ctx.fold, ctx.grad_kind = slices, fold, grad_kind
        device = x.device.type  # backward runs under the forward's autocast state (like torch.amp.custom_bwd)
        enabled, dtype = torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
        ctx.amp = (enabled, dtype)
        # under autocast every product that reads x runs in `dtype`: keep x in it (half the memory of a float32
        # copy, like the backbone's own autocast Linear, which saves its cast input)
        saved_x = x.to(dtype) if enabled and x.is_floating_point() else x
        ctx.save_for_backward(saved_x, kept, weight, past_scale, past_down, past_up, cur_scale, cur_down, cur_up)
        # the dtype each returned gradient must have (None: no gradient), in `backward`'s return order
        ctx.grad_dtypes = tuple(None if t is None else t.dtype for t in
                                (x, None, None, past_scale, None, None, cur_scale, cur_down, cur_up, None, None, None))
        return y

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        enabled, dtype = ctx.amp
        with torch.autocast(grad_out.device.type, dtype=dtype, enabled=enabled):
            grads = _AdaptedLinear.gradients(ctx, grad_out)
        # under autocast the products come out in the autocast dtype: each gradient takes its input's dtype
        return tuple(g if g is None else g.to(want) for g, want in zip(grads, ctx.grad_dtypes, strict=True))

    @staticmethod
    def gradients(ctx, grad_out):  # type: ignore[no-untyped-def]
        x, kept, weight, ps, pd, pu, cs, cd, cu = ctx.saved_tensors
        needs = ctx.needs_input_grad
        g = grad_out.reshape(-1, grad_out.shape[-1])
        x2 = x.reshape(-1, x.shape[-1])
        has_past = pd is not None and pd.shape[1] > 0
        has_cur = cd is not None
        g_ps = [] if needs[3] and has_past else None
        g_cs = [] if needs[6] and has_cur else None
        g_cd = [] if needs[7] and has_cur else None
        g_cu = [] if needs[8] and has_cur else None
        grad_x = None
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
            downs, ups, scales = Terms(ps, pd, pu, cs, cd, cu).stacked()
            num_slices, cols = downs.shape[0], downs.shape[1]
            R = pd.shape[1] if has_past else 0
            P = kept if not ctx.fold else x2 @ downs.reshape(num_slices * cols, -1).t()  # [M, S R']
            back = [] if needs[0] and not ctx.fold else None
            for s, (a, b) in enumerate(ctx.slices):
                gs = g[:, a:b]
                Ps = P[:, s * cols:(s + 1) * cols]
                Q = gs @ ups[s]  # [M, R']
                if back is not None:
                    back.append(Q * scales[s].to(Q.dtype))
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
            if back is not None:  # dL/dx = g W0 + sum_s (Q_s * scale_s) Dall_s, one extra matmul
                grad_x = torch.addmm(g @ weight, torch.cat(back, 1), downs.reshape(num_slices * cols, -1))
                grad_x = grad_x.reshape(x.shape)
        if needs[0] and grad_x is None:  # folded: dL/dx = g (W0 + delta)
            grad_x = grad_out @ kept

        def stack(items: list[Tensor] | None) -> Tensor | None:
            return None if items is None else torch.stack(items)

        return (grad_x, None, None, stack(g_ps), None, None, stack(g_cs), stack(g_cd), stack(g_cu),
                None, None, None)


def _kernel(fold: bool, grad_kind: str) -> Callable[..., Tensor]:
    def run(x: Tensor, weight: Tensor, bias: Tensor | None, terms: Terms, slices: Slices) -> Tensor:
        if not torch.is_grad_enabled():  # inference: no autograd bookkeeping, nothing saved
            with torch.no_grad():
                if fold:
                    return F.linear(x, add_delta_(weight.detach().clone(), terms, slices), bias)
                return _factored_forward(x, weight, bias, terms, slices)[0]
        return _AdaptedLinear.apply(x, weight, bias, terms.past_scale, terms.past_down, terms.past_up,
                                    terms.cur_scale, terms.cur_down, terms.cur_up, slices, fold, grad_kind)

    return run


KernelFn = Callable[[Tensor, Tensor, Tensor | None, Terms, Slices], Tensor]
KERNELS: dict[str, KernelFn] = {name: _kernel(fold, grad_kind) for name, (fold, grad_kind) in KERNEL_KINDS.items()}

#: multiply-accumulates that copying one weight element is worth (memory traffic vs arithmetic), used to
#: charge the folded kernels for their per-call copy of W0; a rough constant, right within a factor of ~2
#: on the CPUs and GPUs this was tried on
COPY_COST = 64


def choose_kernel(tokens: int, in_features: int, out_features: int, num_slices: int, width: int,
                  past_rank: int, cur_rank: int, needs_param_grad: bool, needs_x_grad: bool) -> str:
    """The cheapest exact strategy by multiply-accumulate counts (see the module docstring)."""
    M, S, w, r, fan_in = tokens, num_slices, width, cur_rank, in_features
    Rp = past_rank + cur_rank
    fold = S * w * Rp * fan_in + COPY_COST * out_features * fan_in  # delta into a copy of W0
    project = S * M * Rp * (fan_in + w)  # P = x Dall^T and (P * scale) Uall^T, or P and Q
    if not needs_param_grad:
        return "factored" if project < fold else "fused_proj"
    cur_grads = S * M * r * (fan_in + w)
    costs = {
        "factored": project + S * M * Rp * w + cur_grads + (S * M * Rp * fan_in if needs_x_grad else 0),
        "fused_proj": fold + project + cur_grads,
        "fused_wgrad": fold + S * w * fan_in * (M + past_rank + 2 * r),
    }
    return min(costs, key=costs.__getitem__)
