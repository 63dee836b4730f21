"""timm Vision Transformers by explicit weight tag (e.g. `vit_base_patch16_224.augreg2_in21k_ft_in1k`).

The pooled feature is timm's own (`num_classes=0`: CLS token after the final norm for ViT-B/16).
Adapters target `blocks.*.attn.qkv[q,v]`: the q and v slices of timm's fused qkv, k untouched.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch

from sdlora.backbones.base import Backbone, weights_sha256
from sdlora.registry import BACKBONES

#: untagged legacy names -> the tag they resolve to with timm 1.0.x (what the official code gets)
LEGACY_TAGS: dict[str, str] = {
    "vit_base_patch16_224": "vit_base_patch16_224.augreg2_in21k_ft_in1k",
    "vit_base_patch16_224_in21k": "vit_base_patch16_224.augreg_in21k",
    "vit_base_patch16_224_dino": "vit_base_patch16_224.dino",
}


def resolve_tag(model: str, pretrained: bool) -> str:
    """Map an untagged legacy name to an explicit tag (with a warning) when pretrained weights are wanted."""
    if pretrained and "." not in model and model in LEGACY_TAGS:
        tag = LEGACY_TAGS[model]
        warnings.warn(f"backbone {model!r} has no weight tag; using {tag!r} (pin the tag in the config)",
                      stacklevel=2)
        return tag
    return model


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A local weights file: safetensors, or a torch checkpoint loaded with weights_only=True (no pickle)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"pretrained_file not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    state = torch.load(str(p), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


@BACKBONES.register("timm_vit")
class TimmViT(Backbone):
    """A timm ViT; pretrained from the hub (online), from `pretrained_file`, or random init for tests."""

    @dataclass
    class Options:
        model: str = "vit_base_patch16_224.augreg2_in21k_ft_in1k"
        pretrained: bool = True
        pretrained_file: str | None = None
        model_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. img_size, depth (tiny test models)

    def __init__(self, options: Options) -> None:
        super().__init__()
        self.options = options
        self.tag = resolve_tag(options.model, options.pretrained and options.pretrained_file is None)
        hub = options.pretrained and options.pretrained_file is None
        self.model = timm.create_model(self.tag, pretrained=hub, num_classes=0, **options.model_kwargs)
        if options.pretrained_file is not None:
            state = load_weights_file(options.pretrained_file)
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
            self.model.load_state_dict(state, strict=True)
        self.feature_dim = int(self.model.num_features)
        self.default_targets = ["blocks.*.attn.qkv[q,v]"]
        self.weights_hash = weights_sha256(self.model.state_dict())
        self.freeze()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)

    def info(self) -> dict[str, Any]:
        return {
            "name": "timm_vit",
            "model": self.options.model,
            "tag": self.tag,
            "pretrained": self.options.pretrained,
            "pretrained_file": self.options.pretrained_file,
            "weights_sha256": self.weights_hash,
        }
