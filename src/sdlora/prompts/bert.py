"""Prefix-tuning and prompt tokens for Hugging Face BERT-like encoders, by wrapping (not forking) their modules.

`PrefixSelfAttention` wraps a BERT-style self-attention (query/key/value Linear layers, `attention_head_size`,
`scaling`, `config._attn_implementation`, as `BertSelfAttention` in transformers 5) and replicates its
forward with the prefixes joined to the keys and values; the attention mask gains "attend" columns for them:

    out = Attn(q, [P_k; k], [P_v; v], mask = [0 ... 0 | m])

Prompt tokens (L2P) go in after the [CLS] embedding through a forward hook on `model.embeddings`, and the
2-d padding mask given to the model gains ones at their positions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert.modeling_bert import eager_attention_forward

from sdlora.prompts.inject import PromptInjection
from sdlora.wrapping import ModuleWrapper


def pad_mask(mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """Prepend `length` key columns that every query may attend to (0 for additive masks, True for boolean)."""
    if mask is None or length == 0:
        return mask
    fill = torch.ones if mask.dtype == torch.bool else torch.zeros
    return torch.cat([fill(*mask.shape[:-1], length, dtype=mask.dtype, device=mask.device), mask], dim=-1)


class PrefixSelfAttention(ModuleWrapper):
    """A BERT-like self-attention whose keys/values get `prefix = (P_k, P_v)` ([B or 1, L, hidden]) prepended."""

    base: Any  # any BERT-like self-attention module (duck-typed: __init__ checks the attributes forward uses)

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        missing = [a for a in ("query", "key", "value", "attention_head_size", "scaling", "config")
                   if not hasattr(base, a)]
        if missing:
            raise TypeError(f"PrefixSelfAttention wraps BERT-like self-attention; {type(base).__name__} lacks "
                            f"{missing}")
        self.base = base
        self.prefix: tuple[torch.Tensor, torch.Tensor] | None = None
        self.train(base.training)  # wrapped in eval mode: stays in eval mode (dropout off)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.prefix is None:
            return self.base(hidden_states, attention_mask, *args, **kwargs)
        b = self.base
        batch = hidden_states.shape[0]
        shape = (*hidden_states.shape[:-1], -1, b.attention_head_size)

        def heads(t: torch.Tensor) -> torch.Tensor:
            heads_ = t.shape[-1] // b.attention_head_size
            return t.expand(batch, -1, -1).reshape(batch, t.shape[-2], heads_, b.attention_head_size).transpose(1, 2)

        q = b.query(hidden_states).view(shape).transpose(1, 2)
        k = torch.cat([heads(self.prefix[0].to(q.dtype)), b.key(hidden_states).view(shape).transpose(1, 2)], 2)
        v = torch.cat([heads(self.prefix[1].to(q.dtype)), b.value(hidden_states).view(shape).transpose(1, 2)], 2)
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(b.config._attn_implementation, eager_attention_forward)
        out, weights = attend(b, q, k, v, pad_mask(attention_mask, self.prefix[0].shape[-2]),
                              dropout=0.0 if not self.training else b.dropout.p, scaling=b.scaling, **kwargs)
        return out.reshape(*hidden_states.shape[:-1], -1).contiguous(), weights


class PromptedBert(PromptInjection):
    """Prefix wrappers on every layer's self-attention of a BERT-like `model` (`encoder.layer[i].attention.self`)
    and prompt tokens after [CLS]; `hidden(inputs)` runs the model with the injected prompts."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.attentions: list[PrefixSelfAttention] = []
        for layer in model.encoder.layer:  # type: ignore[union-attr]  # nn.Module.__getattr__: Tensor | Module
            if not isinstance(layer.attention.self, PrefixSelfAttention):
                layer.attention.self = PrefixSelfAttention(layer.attention.self)
            self.attentions.append(layer.attention.self)
        self.tokens: torch.Tensor | None = None
        self.prompt_start = 1  # after [CLS]
        model.embeddings.register_forward_hook(self._insert_tokens)  # type: ignore[union-attr]  # as above

    @property
    def depth(self) -> int:
        return len(self.attentions)

    def _insert_tokens(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        if self.tokens is None:
            return None
        prompts = self.tokens.to(output.dtype).expand(output.shape[0], -1, -1)
        return self.insert(output, prompts)

    def hidden(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Last hidden states [B, N (+ L prompt tokens after [CLS]), hidden]."""
        inputs = dict(inputs)
        if self.tokens is not None and "attention_mask" in inputs:
            mask = inputs["attention_mask"]
            ones = mask.new_ones(mask.shape[0], self.tokens.shape[-2])
            inputs["attention_mask"] = self.insert(mask, ones)
        return self.model(**inputs).last_hidden_state

    def unwrapped_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's state dict under the library's own names (the wrappers' `.base` removed)."""
        return {k.replace(".attention.self.base.", ".attention.self."): v.detach().clone()
                for k, v in self.model.state_dict().items()}
