"""The adapted Linear: the frozen original layer (wrapped, never copied) plus a bank of directions.

Bank of one Linear with S adapted output slices of width w (buffers are frozen, parameters train):

    past_down [S, R, in]   past_up [S, w, R]   R = sum of the ranks of stored tasks
    col_task  [R]          task slot of every rank column (gather index for the per-column scale)
    divisor   [S, T]       n_k per slice and stored task slot (computed once, at freeze time)
    offset    [S, T]       per-matrix magnitude offsets (only KD with kd_fit=per_layer writes them)
    cur_down  [S, r, in]   cur_up [S, w, r]   the current task's factors (Parameters), or None

Forward for slice s:  y_s = x W0_s^T + sum_k (alpha_k + offset_sk) / n_sk U_sk D_sk x + alpha_t c_t U_t D_t x
computed by one of `sdlora.adapters.kernels` (two skinny matmuls, or the adapter folded into the weight);
never a loop over tasks, never new modules.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from sdlora.adapters.kernels import KERNELS, Terms, add_delta_, choose_kernel
from sdlora.adapters.magnitudes import Magnitudes
from sdlora.adapters.modes import CurrentMode
from sdlora.adapters.norms import NormFn, safe_divisor
from sdlora.adapters.targets import Slice, SlicedLinear


class DirectionBank(nn.Module):
    """Stored (frozen) and current (trainable) directions of one adapted Linear."""

    past_down: Tensor
    past_up: Tensor
    col_task: Tensor
    divisor: Tensor
    offset: Tensor
    cur_down: nn.Parameter | None
    cur_up: nn.Parameter | None

    def __init__(self, num_slices: int, width: int, in_features: int, *, device: torch.device,
                 dtype: torch.dtype) -> None:
        super().__init__()
        self.num_slices, self.width, self.in_features = num_slices, width, in_features
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.register_buffer("past_down", torch.zeros(num_slices, 0, in_features, **kw))
        self.register_buffer("past_up", torch.zeros(num_slices, width, 0, **kw))
        self.register_buffer("col_task", torch.zeros(0, dtype=torch.long, device=device))
        self.register_buffer("divisor", torch.ones(num_slices, 0, **kw))
        self.register_buffer("offset", torch.zeros(num_slices, 0, **kw))
        self.register_parameter("cur_down", None)
        self.register_parameter("cur_up", None)
        self.has_offset = False  # skip the add while every offset is zero

    # -- shape facts -----------------------------------------------------------------------------
    @property
    def past_rank(self) -> int:
        return self.past_down.shape[1]

    @property
    def num_stored(self) -> int:
        return self.divisor.shape[1]

    @property
    def cur_rank(self) -> int:
        return 0 if self.cur_down is None else self.cur_down.shape[1]

    def current_factors(self) -> tuple[nn.Parameter, nn.Parameter]:
        """(cur_up, cur_down) of the open direction (begin_task opens one)."""
        assert self.cur_up is not None and self.cur_down is not None, "no current direction"
        return self.cur_up, self.cur_down

    # -- lifecycle -------------------------------------------------------------------------------
    def new_current(self, rank: int, mode: CurrentMode) -> None:
        kw: dict[str, Any] = {"device": self.past_down.device, "dtype": self.past_down.dtype}
        down = torch.empty(self.num_slices, rank, self.in_features, **kw)
        up = torch.empty(self.num_slices, self.width, rank, **kw)
        mode.init_factors(up, down)
        self.cur_down, self.cur_up = nn.Parameter(down), nn.Parameter(up)

    @torch.no_grad()
    def store_current(self, task: int, divisor: Tensor, keep: bool = True) -> None:
        """Append the current factors to the frozen stack (or drop them when `keep` is False)."""
        assert self.cur_down is not None and self.cur_up is not None
        rank = self.cur_rank if keep else 0
        if keep:
            self.past_down = torch.cat([self.past_down, self.cur_down.detach()], 1)
            self.past_up = torch.cat([self.past_up, self.cur_up.detach()], 2)
        task_ids = torch.full((rank,), task, dtype=torch.long, device=self.col_task.device)
        self.col_task = torch.cat([self.col_task, task_ids])
        div = divisor.to(self.divisor) if keep else torch.ones_like(divisor, dtype=self.divisor.dtype)
        self.divisor = torch.cat([self.divisor, div[:, None]], 1)
        self.offset = torch.cat([self.offset, self.offset.new_zeros(self.num_slices, 1)], 1)
        self.cur_down = self.cur_up = None

    @torch.no_grad()
    def normalize_stored(self, norm: NormFn) -> None:
        """n_k = norm(U_k, D_k) for every stored direction (idempotent: the stored factors never change)."""
        counts = torch.bincount(self.col_task, minlength=self.num_stored).tolist()
        start = 0
        for k, rank in enumerate(counts):
            if rank:
                cols = slice(start, start + rank)
                self.divisor[:, k] = safe_divisor(norm(self.past_up[:, :, cols], self.past_down[:, cols]))
            start += rank

    def set_state(self, ranks: list[int], past_down: Tensor, past_up: Tensor, divisor: Tensor,
                  offset: Tensor, cur_down: Tensor | None, cur_up: Tensor | None) -> None:
        """Replace everything (loading); shapes were checked by the caller."""
        kw: dict[str, Any] = {"device": self.past_down.device, "dtype": self.past_down.dtype}
        self.past_down, self.past_up = past_down.to(**kw).clone(), past_up.to(**kw).clone()
        self.divisor, self.offset = divisor.to(**kw).clone(), offset.to(**kw).clone()
        self.has_offset = bool(self.offset.ne(0).any())
        device = kw["device"]
        self.col_task = torch.repeat_interleave(
            torch.arange(len(ranks), device=device), torch.tensor(ranks, dtype=torch.long, device=device)
        )
        if cur_down is None or cur_up is None:
            self.cur_down = self.cur_up = None
        else:
            self.cur_down = nn.Parameter(cur_down.to(**kw).clone())
            self.cur_up = nn.Parameter(cur_up.to(**kw).clone())

    # -- what the forward adds -------------------------------------------------------------------
    def terms(self, alpha: Tensor, mode: CurrentMode, norm: NormFn) -> Terms:
        """The scaled terms for the current magnitudes (a gather per step; alphas train)."""
        terms = Terms()
        dtype = self.past_down.dtype
        if self.past_rank:
            per_task = alpha[: self.num_stored].to(dtype)[None, :]
            if self.has_offset:
                per_task = per_task + self.offset
            per_task = per_task / self.divisor
            terms.past_scale = per_task.index_select(1, self.col_task)
            terms.past_down, terms.past_up = self.past_down, self.past_up
        if self.cur_down is not None:
            assert self.cur_up is not None  # the current factors are set and cleared together
            scale = alpha[self.num_stored].to(dtype).expand(self.num_slices)
            factor = mode.current_factor(self.cur_up, self.cur_down, norm)
            terms.cur_scale = scale if factor is None else scale * factor
            terms.cur_down, terms.cur_up = self.cur_down, self.cur_up
        return terms

    def extra_repr(self) -> str:
        return (f"slices={self.num_slices}, width={self.width}, in={self.in_features}, "
                f"stored_tasks={self.num_stored}, past_rank={self.past_rank}, cur_rank={self.cur_rank}")


class SDLoRALinear(SlicedLinear):
    """Drop-in replacement of an nn.Linear: `base` is the original (frozen) layer, `bank` the adapter."""

    magnitudes: Magnitudes  # in __dict__ (see __init__)
    w0_rows: Tensor | None

    def __init__(self, base: nn.Linear, slices: tuple[Slice, ...], magnitudes: Magnitudes,
                 mode: CurrentMode, norm: NormFn, kernel: str = "auto") -> None:
        super().__init__(base, slices)
        self.bank = DirectionBank(len(slices), self.width, base.in_features,
                                  device=base.weight.device, dtype=base.weight.dtype)
        # shared with every adapted layer and owned by the adapter: a plain reference, not a submodule
        self.__dict__["magnitudes"] = magnitudes
        self.mode, self.norm, self.kernel = mode, norm, kernel
        self.merged = False
        self.register_buffer("w0_rows", None, persistent=False)  # exact W0 rows while merged
        self.last_kernel: str | None = None

    def terms(self) -> Terms:
        return self.bank.terms(self.magnitudes.alpha, self.mode, self.norm)

    def forward(self, x: Tensor) -> Tensor:
        bank = self.bank
        if self.merged or (bank.past_rank == 0 and bank.cur_down is None):
            return self.base(x)
        alpha = self.magnitudes.alpha
        if alpha.device != x.device:
            raise RuntimeError(
                f"SD-LoRA magnitudes are on {alpha.device} but the input is on {x.device}: "
                "move the adapter too (adapter.to(device))"
            )
        terms = self.terms()
        kernel = self.kernel
        if kernel == "auto":
            grad_params = torch.is_grad_enabled() and (
                alpha.requires_grad or (bank.cur_down is not None and bank.cur_down.requires_grad)
            )
            kernel = choose_kernel(x.numel() // x.shape[-1], self.in_features, self.out_features,
                                   bank.num_slices, bank.width, bank.past_rank, bank.cur_rank,
                                   grad_params, x.requires_grad and torch.is_grad_enabled())
        self.last_kernel = kernel
        return KERNELS[kernel](x, self.base.weight, self.base.bias, terms, self.bounds)

    # -- dense views, merge ----------------------------------------------------------------------
    @torch.no_grad()
    def delta_weight(self) -> Tensor:
        """The dense update (out x in) that the adapter currently adds to W0 (zero rows outside slices)."""
        weight = self.base.weight
        return add_delta_(torch.zeros_like(weight), self.terms(), self.bounds)

    @torch.no_grad()
    def merged_weight(self) -> Tensor:
        """W0 + delta with the sum taken in float64 and cast once: `merge` and every export write this tensor."""
        weight = self.base.weight
        if self.merged:
            return weight.detach().clone()
        # rows outside the slices make the float64 round trip unchanged (every float32 / bf16 value is exact)
        merged = add_delta_(weight.detach().to(torch.float64), self.terms().to(torch.float64), self.bounds)
        return merged.to(weight.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """W0 <- `merged_weight()`, once; the W0 rows are kept so `unmerge` restores them bit for bit.

        While merged the layer is the plain Linear (nothing trains through the adapter until `unmerge`).
        """
        if self.merged:
            return
        weight = self.base.weight
        merged = self.merged_weight()
        self.w0_rows = torch.cat([weight[a:b] for a, b in self.bounds]).clone()
        weight.data.copy_(merged)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        assert self.w0_rows is not None  # kept by merge()
        weight = self.base.weight
        offset = 0
        for a, b in self.bounds:
            weight.data[a:b] = self.w0_rows[offset:offset + b - a]
            offset += b - a
        self.w0_rows = None
        self.merged = False

    def extra_repr(self) -> str:
        names = ",".join(f"{s.name}[{s.start}:{s.stop}]" for s in self.slices)
        return f"slices={names}, mode={self.mode.name}, kernel={self.kernel}, merged={self.merged}"
