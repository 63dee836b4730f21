"""Prefix-tuning and prompt tokens for timm Vision Transformers, by wrapping (not forking) timm's modules.

`PrefixAttention.forward` replicates timm 1.0.x `timm.layers.Attention.forward` through the wrapped module's
public submodules and flags (qkv, q_norm/k_norm, fused_attn, attn_drop, norm, gate, proj, proj_drop), adding
only the concatenation of the prefixes to the keys and values:

    q, k, v = split(qkv(x));  k' = [P_k; k],  v' = [P_v; v];  out = proj(softmax(q k'^T / sqrt(d)) v')

P_k and P_v live in the projected key/value space (per head), as in the DualPrompt and CODA-Prompt releases
(dualprompt-pytorch `Attention.forward(x, prompt)`, CODA-Prompt `models/vit.py`); k_norm (qk_norm models)
also normalises the prefix keys, so they live where the model's keys live.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Attention
from torch import nn

from sdlora.prompts.inject import PromptInjection
from sdlora.wrapping import ModuleWrapper


class PrefixAttention(ModuleWrapper):
    """A timm `Attention` whose keys and values get `prefix = (P_k, P_v)` ([B, L, attn_dim]) prepended.

    With `prefix = None` it calls the wrapped module itself; with an empty prefix (L = 0) its replica equals
    the wrapped module's output."""

    base: Attention

    def __init__(self, base: Attention) -> None:
        super().__init__()
        if not isinstance(base, Attention):
            raise TypeError(f"PrefixAttention wraps timm.layers.Attention, got {type(base).__name__}")
        self.base = base
        self.prefix: tuple[torch.Tensor, torch.Tensor] | None = None
        self.train(base.training)  # wrapped in eval mode: stays in eval mode (dropout off)

    def _heads(self, t: torch.Tensor, batch: int) -> torch.Tensor:
        """[B, L, H * d] -> [B, H, L, d]."""
        b = self.base
        return t.expand(batch, -1, -1).reshape(batch, t.shape[-2], b.num_heads, b.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
                ) -> torch.Tensor:
        if self.prefix is None:
            return self.base(x, attn_mask=attn_mask, is_causal=is_causal)
        if attn_mask is not None or is_causal:
            raise NotImplementedError("PrefixAttention: attention masks with prefixes are not supported")
        b = self.base
        batch, tokens, _ = x.shape
        attn_dim = b.num_heads * b.head_dim
        gate_layer = getattr(b, "gate", None)  # absent in older timm
        gate = gate_layer(x).sigmoid() if gate_layer is not None else None
        q, k, v = b.qkv(x).reshape(batch, tokens, 3, b.num_heads, b.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        prefix_k, prefix_v = (self._heads(p.to(x.dtype), batch) for p in self.prefix)
        q, k = b.q_norm(q), b.k_norm(torch.cat([prefix_k, k], dim=2))
        v = torch.cat([prefix_v, v], dim=2)
        if b.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=b.attn_drop.p if self.training else 0.0)
        else:
            attn = (q * b.scale) @ k.transpose(-2, -1)
            x = b.attn_drop(attn.softmax(dim=-1)) @ v
        x = b.norm(x.transpose(1, 2).reshape(batch, tokens, attn_dim))
        if gate is not None:
            x = x * gate
        return b.proj_drop(b.proj(x))


class PromptedViT(PromptInjection):
    """Prefix wrappers on every block's attention of a timm VisionTransformer, and a pre-hook on `blocks`
    that inserts prompt tokens after the prefix ([CLS]/register) tokens: [CLS, p_1..p_L, patches].

    Holds no parameters (the method owns the prompts). `inject` sets the prompts for the forwards inside it.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.attentions: list[PrefixAttention] = []
        for block in model.blocks:  # type: ignore[union-attr]  # nn.Module.__getattr__: Tensor | Module
            if not isinstance(block.attn, PrefixAttention):
                block.attn = PrefixAttention(block.attn)
            self.attentions.append(block.attn)
        self.prompt_start = int(getattr(model, "num_prefix_tokens", 1))  # after [CLS] (and any register tokens)
        self.tokens: torch.Tensor | None = None
        model.blocks.register_forward_pre_hook(self._insert_tokens)  # type: ignore[union-attr]  # as above

    @property
    def depth(self) -> int:
        return len(self.attentions)

    def _insert_tokens(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
        if self.tokens is None:
            return None
        x = args[0]
        prompts = self.tokens.to(x.dtype).expand(x.shape[0], -1, -1)
        return (self.insert(x, prompts), *args[1:])

    def hidden(self, inputs: torch.Tensor) -> torch.Tensor:
        """Final-norm token states [B, N (+ L prompt tokens after [CLS]), dim] (timm `forward_features`)."""
        return self.model.forward_features(inputs)  # type: ignore[operator]  # a timm ViT method, via nn.Module.__getattr__

    def unwrapped_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's state dict under timm's own names (the wrappers' `.base` removed)."""
        return {k.replace(".attn.base.", ".attn."): v.detach().clone() for k, v in self.model.state_dict().items()}
