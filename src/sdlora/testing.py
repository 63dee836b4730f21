"""Tiny random-initialised models for tests and examples (no downloads, milliseconds on a CPU)."""

from __future__ import annotations

from typing import Any

from torch import nn


def tiny_vit(**overrides: object) -> nn.Module:
    """A 2-block timm ViT (dim 48, 3 heads, 32x32 input, patch 4: 65 tokens), random weights, no head."""
    import timm

    kwargs: dict[str, Any] = dict(pretrained=False, num_classes=0, img_size=32, patch_size=4, depth=2,
                                     embed_dim=48, num_heads=3)
    kwargs.update(overrides)
    return timm.create_model("vit_tiny_patch16_224", **kwargs)


def tiny_bert(**overrides: object) -> nn.Module:
    """A 2-layer Hugging Face BERT (hidden 32, 2 heads, vocabulary 100), random weights."""
    from transformers import BertConfig, BertModel

    kwargs: dict[str, Any] = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64)
    kwargs.update(overrides)
    return BertModel(BertConfig(**kwargs))


def reference_delta(adapter, name: str, newest_normalised: bool | None = None):  # noqa: ANN001, ANN201
    """The dense update of adapted module `name` from `sdlora.adapters.reference.dense_update` (Eq. 4).

    Reads the adapter's stored factors and magnitudes only (not its divisors, kernels or norm identities), so
    it is an independent oracle for tests. Zero rows outside the adapted slices.
    """
    import torch

    from sdlora.adapters.reference import dense_update

    wrapper = adapter.wrappers[name]
    bank = wrapper.bank
    if bank.offset.ne(0).any():
        raise NotImplementedError("reference_delta does not model per-layer KD offsets")
    config = adapter.config
    alpha = adapter.magnitudes.alpha.detach().double()
    weight = wrapper.base.weight
    delta = torch.zeros(weight.shape, dtype=torch.float64)
    for s, (a, b) in enumerate(wrapper.bounds):
        stored, alphas, start = [], [], 0
        for k, rank in enumerate(adapter.ranks):
            if rank:
                stored.append((bank.past_up[s, :, start:start + rank], bank.past_down[s, start:start + rank]))
                alphas.append(alpha[k])
            start += rank
        current = None
        if bank.cur_down is not None:
            current = (bank.cur_up[s].detach(), bank.cur_down[s].detach())
            alphas.append(alpha[adapter.num_tasks])
        if not stored and current is None:
            continue
        newest_is_last = bool(adapter.ranks) and adapter.ranks[-1] > 0
        delta[a:b] = dense_update(stored, alphas, mode=config.current_mode, norm=config.resolved_norm,
                                  current=current,
                                  newest_normalised=newest_normalised if newest_is_last else True)
    return delta
