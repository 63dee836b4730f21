"""timm Vision Transformers by explicit weight tag (e.g. `vit_base_patch16_224.augreg2_in21k_ft_in1k`).

The pooled feature is timm's own (`num_classes=0`: CLS token after the final norm for ViT-B/16).
Adapters target `blocks.*.attn.qkv[q,v]`: the q and v slices of timm's fused qkv, k untouched.
"""

from __future__ import annotations

import warnings
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import resolve_model_data_config
from timm.models import get_deprecated_models, get_pretrained_cfg

from sdlora.backbones.base import Backbone, BackboneUnavailable, first_line, weights_sha256
from sdlora.backbones.options import TimmViTOptions
from sdlora.prompts.vit import PromptedViT
from sdlora.registry import BACKBONES
from sdlora.typed import did_you_mean

#: untagged names of the official code / PILOT -> the tag they resolve to with timm 1.0.x; timm's own
#: deprecation table (e.g. `vit_base_patch16_224_dino` -> `.dino`) covers the rest, and any other
#: untagged name gets timm's default tag for it
LEGACY_TAGS: dict[str, str] = {
    "vit_base_patch16_224": "vit_base_patch16_224.augreg2_in21k_ft_in1k",
    "vit_base_patch16_224_in21k": "vit_base_patch16_224.augreg_in21k",
    "vit_base_patch16_224_dino": "vit_base_patch16_224.dino",
}


def _timm_tag(model: str) -> str | None:
    """What timm itself would load for an untagged name (deprecated alias or default tag), if anything."""
    deprecated = get_deprecated_models()
    if model in deprecated:
        return deprecated[model]
    cfg = get_pretrained_cfg(model)
    return f"{model}.{cfg.tag}" if cfg is not None and cfg.tag else None


def resolve_tag(model: str, pretrained: bool) -> str:
    """An explicit `architecture.tag` for `model`; untagged names are mapped (warned when weights load).

    Pinning matters: what an untagged name loads changed between timm releases (timm #1599).
    """
    if "." in model:
        return model
    tag = LEGACY_TAGS.get(model) or _timm_tag(model)
    if tag is None:
        return model
    if pretrained:
        warnings.warn(f"backbone {model!r} has no weight tag; using {tag!r} (pin the tag in the config)",
                      stacklevel=2)
    return tag


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
    return {k.removeprefix("module."): v for k, v in state.items()}


def create_hub_model(tag: str, **kwargs: Any) -> torch.nn.Module:
    """`timm.create_model(tag, pretrained=True)` with a clear error when the weights cannot be fetched."""
    try:
        return timm.create_model(tag, pretrained=True, **kwargs)
    except (OSError, RuntimeError) as err:  # huggingface_hub: offline, no cache entry, HTTP errors; unknown tag
        raise BackboneUnavailable(
            f"could not load the pretrained weights of {tag!r} from the Hugging Face hub ({first_line(err)}); "
            "when offline, pre-populate the HF cache (HF_HUB_OFFLINE=1) or set backbone.options.pretrained_file"
        ) from err


def check_model_name(model: str) -> None:
    """An architecture that timm does not know is a config error, found before anything is loaded."""
    arch = model.split(".", 1)[0]
    if not timm.is_model(arch):
        raise ValueError(f"timm {timm.__version__} does not know the model {model!r} (looked up {arch!r} in "
                         f"timm's model registry){did_you_mean(arch, timm.list_models())}; "
                         "`python -c 'import timm; print(timm.list_models(\"vit_*\"))'` lists the names")


@BACKBONES.register("timm_vit")
class TimmViT(Backbone):
    """A timm ViT; pretrained from the hub (online), from `pretrained_file`, or random init for tests."""

    Options = TimmViTOptions

    @classmethod
    def check_options(cls, options: TimmViTOptions) -> None:
        """The model's architecture is one timm knows (timm's registry: needs timm, so not in the options)."""
        check_model_name(options.model)

    def __init__(self, options: TimmViTOptions) -> None:
        super().__init__()
        self.check_options(options)
        self.options = options
        hub_or_random = "hub" if options.pretrained else "random"
        self.weights_source = "file" if options.pretrained_file else hub_or_random
        self.tag = resolve_tag(options.model, self.weights_source != "random")
        kwargs = {"num_classes": 0, **options.model_kwargs}
        if self.weights_source == "hub":
            self.model = create_hub_model(self.tag, **kwargs)
        else:
            self.model = timm.create_model(self.tag, pretrained=False, **kwargs)
        if options.pretrained_file is not None:
            state = load_weights_file(options.pretrained_file)
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
            self.model.load_state_dict(state, strict=True)
        self.feature_dim = int(self.model.num_features)  # type: ignore[arg-type]  # a timm model attribute, via nn.Module.__getattr__
        self.default_targets = self.targets_for(self.model) or []
        self.weights_hash = weights_sha256(self.model.state_dict())
        self.freeze()

    @classmethod
    def targets_for(cls, model: torch.nn.Module) -> list[str] | None:
        """q and v of timm's fused `blocks.N.attn.qkv`."""
        fused = any(isinstance(m, torch.nn.Linear) and fnmatchcase(n, "blocks.*.attn.qkv")
                    for n, m in model.named_modules())
        return ["blocks.*.attn.qkv[q,v]"] if fused else None

    @classmethod
    def data_config(cls, options: TimmViTOptions) -> dict[str, Any]:
        """timm's `resolve_model_data_config` of the model built on the meta device (no weights, no download).

        The input size is the model's own (`model_kwargs.img_size` included); timm's pretrained config
        keeps the tag's size even when the model is built for another one.
        """
        with torch.device("meta"):
            model = timm.create_model(resolve_tag(options.model, False), pretrained=False,
                                      **{"num_classes": 0, **options.model_kwargs})
        config = dict(resolve_model_data_config(model))
        img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
        if img_size is not None:
            config["input_size"] = (3, *img_size)
        return config

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)

    def readout(self, hidden: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """timm's `forward_head` (its global pool: [CLS] or token mean, fc_norm; no classifier: num_classes=0)."""
        return self.model.forward_head(hidden)  # type: ignore[operator]  # a timm model attribute, via nn.Module.__getattr__

    def make_prompted(self) -> PromptedViT:
        """Prefix wrappers on every block's attention + prompt tokens after [CLS] (prompt methods)."""
        return PromptedViT(self.model)

    def info(self) -> dict[str, Any]:
        return {
            "name": "timm_vit",
            "model": self.options.model,
            "tag": self.tag,
            "pretrained": self.options.pretrained,
            "pretrained_file": self.options.pretrained_file,
            "weights_source": self.weights_source,
            "weights_sha256": self.weights_hash,
            # what the weights were trained with; the official SD-LoRA code feeds [0, 1] pixels regardless
            "pretrained_mean": list(self.model.pretrained_cfg.get("mean", ())),  # type: ignore[union-attr, operator]
            "pretrained_std": list(self.model.pretrained_cfg.get("std", ())),  # type: ignore[union-attr, operator]
        }
