"""What the prompt methods (L2P, DualPrompt, ...) share: the injector, the frozen query pass, checkpoints.

The backbone stays frozen; `self.prompts` (an nn.Module) holds every prompt parameter, the head is the
base class's growing linear head. The query of the key matching is the frozen backbone's own feature
(timm: [CLS] after the final norm; text encoders: their pooled feature), computed in a second, no-grad
forward in eval mode, as the releases do with a separate `original_model.eval()`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sdlora.backbones.base import Backbone
from sdlora.config import ClassifierConfig, TrainConfig
from sdlora.methods.base import Method, param_group


class PromptMethod(Method):
    """Base of the prompt methods: subclasses set `self.prompts` and use `self.injector`."""

    prompts: nn.Module
    exportable = False  # `export_state_dict` (the frozen backbone + head) serves `sdlora predict` on the run only

    def __init__(self, backbone: Backbone, options: Any, train: TrainConfig,
                 classifier: ClassifierConfig | None = None) -> None:
        super().__init__(backbone, options, train, classifier)
        self.injector = backbone.prompted()

    @torch.no_grad()
    def query(self, inputs: Any) -> torch.Tensor:
        """q(x): the frozen, prompt-free backbone feature (eval mode: no dropout), no gradient."""
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            return self.backbone(inputs)
        finally:
            self.backbone.train(was_training)

    def prompt_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.prompts.parameters() if p.requires_grad]

    def trainable_parameters(self) -> list[dict[str, Any]]:
        lr = getattr(self.options, "prompt_lr", None)
        return [*super().trainable_parameters(), param_group(self.prompt_parameters(), lr)]

    # -- persistence -----------------------------------------------------------------------------
    def prompt_structure(self) -> dict[str, Any]:
        """What `resize_prompts` needs to rebuild `self.prompts` before loading its tensors."""
        return {}

    def resize_prompts(self, structure: dict[str, Any]) -> None:
        """Rebuild growing prompt containers (DualPrompt's per-task E-prompts) from `prompt_structure()`."""

    def checkpoint_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        structure, tensors = super().checkpoint_state()
        structure["prompts"] = self.prompt_structure()
        tensors.update({f"prompts.{k}": v for k, v in self.prompts.state_dict().items()})
        return structure, tensors

    def load_checkpoint_state(self, structure: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        super().load_checkpoint_state(structure, tensors)
        self.resize_prompts(structure["prompts"])
        self.prompts.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("prompts.")})
        self.prompts.to(self._device())
