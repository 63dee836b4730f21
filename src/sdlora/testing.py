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


def reference_delta(adapter, name: str):  # noqa: ANN001, ANN201 (test oracle, typed loosely on purpose)
    """The dense update of adapted module `name`, recomputed from the spec with dense products only.

    W - W0 = sum_k alpha_k U_k D_k / n_k (+ the current term), with n_k = ||U_k D_k||_F (norm="product") or
    ||U_k||_F ||D_k||_F ("factors") for modes official / paper and n_k = 1 for continuous; the current term is
    alpha_t U_t D_t (official, continuous) or alpha_t U_t D_t / n(U_t, D_t) (paper). An independent oracle for
    tests: no low-rank norm identities, no kernels, one Python loop over tasks.
    """
    import torch

    wrapper = adapter.wrappers[name]
    bank = wrapper.bank
    if bank.offset.ne(0).any():
        raise NotImplementedError("reference_delta does not model per-layer KD offsets")
    mode, norm_kind = adapter.config.current_mode, adapter.config.norm
    alpha = adapter.magnitudes.alpha.detach().double()

    def dense_norm(up, down):  # noqa: ANN001, ANN202
        if norm_kind == "product":
            return torch.linalg.matrix_norm(up @ down)
        return torch.linalg.matrix_norm(up) * torch.linalg.matrix_norm(down)

    weight = wrapper.base.weight
    delta = torch.zeros(weight.shape, dtype=torch.float64)
    for s, (a, b) in enumerate(wrapper.bounds):
        start = 0
        for k, rank in enumerate(adapter.ranks):
            up = bank.past_up[s, :, start:start + rank].detach().double()
            down = bank.past_down[s, start:start + rank].detach().double()
            start += rank
            if rank == 0:
                continue
            n = 1.0 if mode == "continuous" else dense_norm(up, down)
            delta[a:b] += alpha[k] * (up @ down) / n
        if bank.cur_down is not None:
            up, down = bank.cur_up[s].detach().double(), bank.cur_down[s].detach().double()
            n = dense_norm(up, down) if mode == "paper" else 1.0
            delta[a:b] += alpha[adapter.num_tasks] * (up @ down) / n
    return delta
