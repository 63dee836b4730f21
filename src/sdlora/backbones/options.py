"""The options of every registered backbone, with no torch: `sdlora train` validates them before importing it.

Each backbone's class says `Options = ...Options` (one of these); see `sdlora.methods.options` for how the
command line's early checks reach them. What needs the backbone's own library (is `model` a name timm knows?)
is the backbone's `check_options`, run by `engine.build.validate_plugins` once every plugin's options are valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from sdlora.typed import ReadWhen


@dataclass
class TimmViTOptions:
    """A timm ViT (`sdlora.backbones.timm_vit`): the model name (a timm architecture, optionally `.tag`), where its
    weights come from, and extra `timm.create_model` arguments."""

    model: str = "vit_base_patch16_224.augreg2_in21k_ft_in1k"
    pretrained: bool = True  # from the hub; a pretrained_file is the weights whatever this says
    pretrained_file: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. img_size, depth (tiny test models)


@dataclass
class HFEncoderOptions:
    """A Hugging Face text encoder (`sdlora.backbones.hf_encoder`): model, pooling, tokenisation."""

    model: str = "all-MiniLM-L6-v2"  # an alias (MODEL_ALIASES), a local folder or a hub id
    pooling: Literal["mean", "cls"] = "mean"
    max_length: int = 64  # tokens per text after truncation (CLS and SEP included)
    normalize: bool = False  # L2-normalise the pooled feature
    tokenizer: str | None = None  # None: the tokenizer of `model`
    random_init_config: dict[str, Any] | None = None  # {model_type: bert, ...}: random weights (tests)
    init_seed: Annotated[int, ReadWhen("random_init_config", (None,), negate=True)] = 0  # of the random init
    config_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {hidden_dropout_prob: 0.0}

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {self.max_length}")
