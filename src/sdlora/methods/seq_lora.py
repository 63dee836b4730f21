"""Sequential LoRA: one LoRA trained task after task, never reset (the forgetting-prone baseline).

    W = W0 + B A                                 (plain; B = 0, A ~ kaiming at the start, as LoRA/PEFT)
    W = W0 + alpha * B A / ||B A||_F             (`decoupled: true`, the SD-LoRA paper's Table 4 ablation
                                                  "W0 + alpha dir(AB)": one direction, one learned magnitude)

Same targets (the backbone's q and v) and rank as SD-LoRA. All classes in a single task (benchmark
`init_classes` = number of classes) make this the joint-training upper bound with the same adapter.
The decoupled form needs a non-zero direction, so A and B both start random; alpha starts at
`magnitude_init` (0 by default: the model starts as the pretrained one, alpha and the factors then learn
together).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from sdlora.adapters.plain_lora import PlainLoRA
from sdlora.backbones.base import Backbone
from sdlora.config import ClassifierConfig, TrainConfig
from sdlora.data.scenario import TaskInfo
from sdlora.methods.base import Method, param_group
from sdlora.methods.options import SeqLoRAOptions
from sdlora.registry import METHODS


@METHODS.register("seq_lora")
class SeqLoRA(Method):
    """One LoRA for every task (plain or decoupled), plus the growing head."""

    Options = SeqLoRAOptions

    def __init__(self, backbone: Backbone, options: SeqLoRAOptions, train: TrainConfig,
                 classifier: ClassifierConfig | None = None) -> None:
        super().__init__(backbone, options, train, classifier)
        self.lora = PlainLoRA(backbone.model, options.targets or backbone.default_targets, options.rank,
                              init="random" if options.decoupled else "lora", decoupled=options.decoupled,
                              magnitude_init=options.magnitude_init)

    def trainable_parameters(self) -> list[dict[str, Any]]:
        return [*super().trainable_parameters(), param_group(self.lora.trainable_parameters(), self.options.lora_lr)]

    @torch.no_grad()
    def end_task(self, task: TaskInfo, train_loader: DataLoader) -> dict[str, Any]:
        info = super().end_task(task, train_loader)
        if self.lora.magnitude is not None:
            info["magnitude"] = float(self.lora.magnitude.detach())
        return info

    def checkpoint_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        structure, tensors = super().checkpoint_state()
        tensors.update({f"lora.{k}": v for k, v in self.lora.state_tensors().items()})
        return structure, tensors

    def load_checkpoint_state(self, structure: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        super().load_checkpoint_state(structure, tensors)
        self.lora.load_state_tensors({k[5:]: v for k, v in tensors.items() if k.startswith("lora.")}, 0)

    def export_backbone(self) -> dict[str, torch.Tensor]:
        return self.lora.merged_state_dict()
