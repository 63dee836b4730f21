"""Plain LoRA on target Linears (the baselines' adapter: sequential LoRA, InfLoRA, the joint upper bound).

Per adapted output slice s (rows a:b of an nn.Linear, see `sdlora.adapters.targets`):

    y[:, a:b] = x W0[a:b]^T + c_s (x A_s^T) B_s^T       A_s: down [r, in], B_s: up [w, r]

with c_s = 1 (plain), or, with ``decoupled=True`` (the SD-LoRA paper's "single decoupled LoRA" ablation,
Table 4), c_s = alpha / ||B_s A_s||_F: one learned magnitude alpha shared by every adapted matrix times a
unit-norm direction. `merge_task()` adds B A to W0 in place (exact, InfLoRA's end of task) and keeps the
factors, so `replay_merges` rebuilds the same weights bit for bit on a fresh model.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdlora.adapters.modes import kaiming_uniform_down
from sdlora.adapters.norms import product_norm, safe_divisor
from sdlora.adapters.targets import Slice, SlicedLinear, find_targets
from sdlora.wrapping import set_submodule

Init = Literal["lora", "random", "zeros"]


@torch.no_grad()
def init_factors(up: Tensor, down: Tensor, init: Init) -> None:
    """``lora``: B = 0, A ~ kaiming_uniform(a=sqrt(5)) (nn.Linear's init, PEFT/LoRA); ``random``: both random
    (a non-zero start, needed when the update is normalised); ``zeros``: both 0 (A set later, InfLoRA)."""
    if init == "zeros":
        up.zero_()
        down.zero_()
        return
    kaiming_uniform_down(down)
    if init == "lora":
        up.zero_()
    else:
        bound = 1.0 / math.sqrt(up.shape[-1])
        up.uniform_(-bound, bound)


class LoRALinear(SlicedLinear):
    """Drop-in replacement of an nn.Linear: `base` is the original layer (frozen), `down`/`up` the factors."""

    def __init__(self, base: nn.Linear, slices: tuple[Slice, ...], rank: int, init: Init = "lora") -> None:
        super().__init__(base, slices)
        self.rank = rank
        kw: dict[str, Any] = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.down = nn.Parameter(torch.empty(len(slices), rank, base.in_features, **kw))
        self.up = nn.Parameter(torch.empty(len(slices), self.width, rank, **kw))
        init_factors(self.up, self.down, init)
        self.__dict__["magnitude"] = None  # the shared alpha (decoupled form), a plain reference

    def scales(self) -> Tensor | None:
        """c_s per slice ([S]); None for the plain form (c = 1)."""
        alpha = self.__dict__["magnitude"]
        if alpha is None:
            return None
        return alpha / safe_divisor(product_norm(self.up, self.down))

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.base.weight, self.base.bias)
        num_slices, rank = self.down.shape[0], self.down.shape[1]
        h = F.linear(x.reshape(-1, x.shape[-1]), self.down.reshape(num_slices * rank, -1))
        scales = self.scales()
        if scales is not None:
            h = h * scales.repeat_interleave(rank).to(h.dtype)
        flat = y.view(-1, y.shape[-1])
        h = h.to(flat.dtype)  # under autocast y and h are half precision, the factors stay fp32
        for s, (a, b) in enumerate(self.bounds):
            flat[:, a:b].addmm_(h[:, s * rank:(s + 1) * rank], self.up[s].t().to(flat.dtype))
        return y

    @torch.no_grad()
    def delta_weight(self) -> Tensor:
        """The dense update (out x in) this layer adds to W0 (zero rows outside the slices)."""
        delta = torch.zeros_like(self.base.weight)
        scales = self.scales()
        for s, (a, b) in enumerate(self.bounds):
            up = self.up[s] if scales is None else self.up[s] * scales[s]
            delta[a:b] = up @ self.down[s]
        return delta

    @torch.no_grad()
    def merge_factors_(self, up: Tensor, down: Tensor) -> None:
        """W0[rows of slice s] += up[s] @ down[s] (in place, the same op on replay: bit-exact rebuilds)."""
        weight = self.base.weight.data
        for s, (a, b) in enumerate(self.bounds):
            weight[a:b].addmm_(up[s].contiguous(), down[s].contiguous())

    def extra_repr(self) -> str:
        names = ",".join(f"{s.name}[{s.start}:{s.stop}]" for s in self.slices)
        return f"slices={names}, rank={self.rank}"


class PlainLoRA(nn.Module):
    """LoRA injected into every target Linear of `model` (which it freezes); the caller owns `model`.

    ``decoupled=True`` adds one shared magnitude (`self.magnitude`, init `magnitude_init`) and normalises
    every B A by its Frobenius norm. `merge_task()` folds the current factors into W0 and records them.
    """

    wrappers: dict[str, LoRALinear]  # in __dict__ (see __init__)

    def __init__(self, model: nn.Module, targets: list[str], rank: int, init: Init = "lora",
                 decoupled: bool = False, magnitude_init: float = 0.0) -> None:
        super().__init__()
        if rank <= 0:
            raise ValueError(f"rank must be positive, got {rank}")
        found = find_targets(model, targets)
        for p in model.parameters():
            p.requires_grad_(False)
        self.targets, self.rank, self.init, self.decoupled = list(targets), rank, init, decoupled
        self.magnitude = nn.Parameter(torch.full((), float(magnitude_init))) if decoupled else None
        wrappers: dict[str, LoRALinear] = {}
        for name, (linear, slices) in found.items():
            wrapper = LoRALinear(linear, slices, rank, init)
            wrapper.__dict__["magnitude"] = self.magnitude
            set_submodule(model, name, wrapper)
            wrappers[name] = wrapper
        if self.magnitude is not None:
            self.magnitude.data = self.magnitude.data.to(next(iter(wrappers.values())).down.device)
        self.__dict__["_model"] = model
        self.__dict__["wrappers"] = wrappers
        #: factors folded into W0 so far, one {module: (up, down)} per merge, in order
        self.merged_factors: list[dict[str, tuple[Tensor, Tensor]]] = []

    @property
    def model(self) -> nn.Module:
        return self.__dict__["_model"]

    def factor_parameters(self, which: Literal["down", "up", "both"] = "both") -> list[nn.Parameter]:
        names = ("down", "up") if which == "both" else (which,)
        return [getattr(w, n) for w in self.wrappers.values() for n in names]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Both factors of every layer, plus the magnitude (decoupled)."""
        extra = [self.magnitude] if self.magnitude is not None else []
        return self.factor_parameters() + extra

    @torch.no_grad()
    def reset_factors(self, init: Init | None = None) -> None:
        for w in self.wrappers.values():
            init_factors(w.up, w.down, init or self.init)

    @torch.no_grad()
    def merge_task(self) -> None:
        """W0 += B A in every layer (plain form only), record the factors, then B = 0."""
        if self.decoupled:
            raise RuntimeError("merge_task needs the plain form (decoupled=False)")
        record = {}
        for name, w in self.wrappers.items():
            up, down = w.up.detach().clone(), w.down.detach().clone()
            w.merge_factors_(up, down)
            record[name] = (up, down)
            w.up.zero_()
        self.merged_factors.append(record)

    @torch.no_grad()
    def replay_merges(self, records: list[dict[str, tuple[Tensor, Tensor]]]) -> None:
        """On a fresh model: apply saved merges in their order (the same ops, so the same weights)."""
        if self.merged_factors:
            raise RuntimeError("replay_merges needs a model without merges")
        for record in records:
            for name, (up, down) in record.items():
                w = self.wrappers[name]
                up, down = up.to(w.base.weight), down.to(w.base.weight)
                w.merge_factors_(up, down)
            self.merged_factors.append({k: (u.to(self._device()), d.to(self._device()))
                                        for k, (u, d) in record.items()})

    def _device(self) -> torch.device:
        return next(iter(self.wrappers.values())).base.weight.device

    # -- state -----------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, Tensor]:
        """Current factors (and magnitude) by stable names; merged factors as `merged.{k}.{module}.*`."""
        out = {}
        for name, w in self.wrappers.items():
            out[f"{name}.down"] = w.down.detach().clone()
            out[f"{name}.up"] = w.up.detach().clone()
        if self.magnitude is not None:
            out["magnitude"] = self.magnitude.detach().clone()
        for k, record in enumerate(self.merged_factors):
            for name, (up, down) in record.items():
                out[f"merged.{k}.{name}.up"] = up.clone()
                out[f"merged.{k}.{name}.down"] = down.clone()
        return out

    @torch.no_grad()
    def load_state_tensors(self, tensors: dict[str, Tensor], num_merged: int) -> None:
        """Inverse of `state_tensors` on a freshly injected model (replays `num_merged` merges first)."""
        records = [{name: (tensors[f"merged.{k}.{name}.up"], tensors[f"merged.{k}.{name}.down"])
                    for name in self.wrappers} for k in range(num_merged)]
        self.replay_merges(records)
        for name, w in self.wrappers.items():
            for key in ("down", "up"):
                value = tensors[f"{name}.{key}"]
                if value.shape != getattr(w, key).shape:
                    raise ValueError(f"LoRA tensor {name}.{key} has shape {tuple(value.shape)}, "
                                     f"expected {tuple(getattr(w, key).shape)}")
                getattr(w, key).copy_(value)
        if self.magnitude is not None:
            self.magnitude.copy_(tensors["magnitude"])

    @torch.no_grad()
    def merged_state_dict(self) -> dict[str, Tensor]:
        """The model's state dict under its original key names with the current B A added (live model
        untouched): loads with strict=True into a fresh timm / transformers model."""
        out: dict[str, Tensor] = {}
        for key, value in self.model.state_dict().items():
            head, _, leaf = key.rpartition(".")
            module, _, sub = head.rpartition(".")
            if head in self.wrappers and leaf in ("down", "up"):
                continue
            if sub == "base" and module in self.wrappers:
                value = value.detach().clone()
                if leaf == "weight":
                    value += self.wrappers[module].delta_weight()
                out[f"{module}.{leaf}"] = value
            else:
                out[key] = value.detach().clone()
        return out
