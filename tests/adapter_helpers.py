"""Shared by the adapter tests."""

from __future__ import annotations

import torch

from sdlora.adapters import SDLoRAAdapter


def perturb(adapter: SDLoRAAdapter, scale: float = 0.3) -> None:
    """Stand-in for training: move every trainable tensor (alphas differ per task afterwards)."""
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.add_(torch.randn_like(p) * scale)
