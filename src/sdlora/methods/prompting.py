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
from sdlora.data.scenario import TaskInfo
from sdlora.methods.base import Method, param_group
from sdlora.methods.options import PromptOptions, TaskPromptOptions
from sdlora.prompts.pool import TaskPrefixes


class PromptMethod(Method):
    """Base of the prompt methods: subclasses set `self.prompts` and use `self.injector`; their options are
    `PromptOptions` (prompted layers beyond the backbone's depth are a ValueError here)."""

    prompts: nn.Module
    exportable = False  # `export_state_dict` (the frozen backbone + head) serves `sdlora predict` on the run only

    def __init__(self, backbone: Backbone, options: PromptOptions, train: TrainConfig,
                 classifier: ClassifierConfig | None = None) -> None:
        super().__init__(backbone, options, train, classifier)
        self.injector = backbone.prompted()
        layers, depth = options.prompt_layers(), self.injector.depth
        if layers and max(layers) >= depth:
            raise ValueError(f"{type(self).__name__}: {' + '.join(options.LAYER_FIELDS)} {layers} exceed the "
                             f"backbone's {depth} layers")

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
        return [*super().trainable_parameters(), param_group(self.prompt_parameters(), self.options.prompt_lr)]

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


class TaskPromptMethod(PromptMethod):
    """Prompt methods with one prefix per task (`TaskPrefixes`: DualPrompt, HiDe-Prompt; `TaskPromptOptions`).
    While task t trains, its prompt is known (`current_task`, from `begin_task` until `end_task`); afterwards each
    input's is inferred."""

    prompts: TaskPrefixes
    #: the task start adds E^t and the task's features use it (the task is known), not the inferred prompt
    task_start_keeps_features = False

    def __init__(self, backbone: Backbone, options: TaskPromptOptions, train: TrainConfig,
                 classifier: ClassifierConfig | None = None) -> None:
        super().__init__(backbone, options, train, classifier)
        self.current_task: int | None = None  # the prompt being trained (the task is known) until `end_task`

    def prompt_structure(self) -> dict[str, Any]:
        return {"tasks": self.prompts.num_tasks, "current_task": self.current_task}

    def resize_prompts(self, structure: dict[str, Any]) -> None:
        self.prompts.resize(structure["tasks"], self._device())
        self.current_task = structure["current_task"]

    def restore_trainable_flags(self, task: TaskInfo) -> None:
        super().restore_trainable_flags(task)
        self.prompts.train_only(task.index)
