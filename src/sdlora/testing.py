"""Tiny random-initialised models for tests and examples (no downloads, milliseconds on a CPU)."""

from __future__ import annotations

from torch import nn


def tiny_vit(**overrides: object) -> nn.Module:
    """A 2-block timm ViT (dim 48, 3 heads, 32x32 input, patch 4: 65 tokens), random weights, no head."""
    import timm

    kwargs: dict[str, object] = dict(pretrained=False, num_classes=0, img_size=32, patch_size=4, depth=2,
                                     embed_dim=48, num_heads=3)
    kwargs.update(overrides)
    return timm.create_model("vit_tiny_patch16_224", **kwargs)


def tiny_bert(**overrides: object) -> nn.Module:
    """A 2-layer Hugging Face BERT (hidden 32, 2 heads, vocabulary 100), random weights."""
    from transformers import BertConfig, BertModel

    kwargs: dict[str, object] = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64)
    kwargs.update(overrides)
    return BertModel(BertConfig(**kwargs))
