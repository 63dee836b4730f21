"""The method interface: one trainer loop calls these hooks (the Mammoth pattern).

    begin_task(task)            grow the head, add per-task parameters
    prepare_task(task, loader)  optional: look at the task's training data before training (InfLoRA)
    trainable_parameters()      param groups the optimiser updates this task
    forward(inputs)             logits over every class seen so far
    loss(logits, labels, task)  the training loss
    end_task(task, loader)      freeze, fit prototypes, absorb...; returns a dict logged in results.json
    checkpoint_state()          (structure: JSON, tensors) - everything needed to rebuild and resume
    load_checkpoint_state(...)
    export_state_dict()         merged backbone + head, loadable by plain timm / transformers
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from sdlora.backbones.base import Backbone
from sdlora.config import TrainConfig
from sdlora.data.scenario import TaskInfo
from sdlora.methods.head import IncrementalHead


class Method(nn.Module):
    """Default behaviour: frozen backbone + growing linear head trained with cross-entropy."""

    Options: type
    #: the trainer trains only when this is true (prototype methods set it to False)
    trains: bool = True

    def __init__(self, backbone: Backbone, options: Any, train: TrainConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.options = options
        self.train_cfg = train
        self.head = IncrementalHead(backbone.feature_dim)
        self.tasks_seen = 0

    # -- lifecycle -------------------------------------------------------------------------------
    def begin_task(self, task: TaskInfo) -> None:
        self.head.grow(task.size, freeze_old=self.train_cfg.freeze_old_head)

    def prepare_task(self, task: TaskInfo, train_loader: DataLoader) -> None:
        """Called right after `begin_task` (not when resuming mid-task) with the task's training data."""

    def trainable_parameters(self) -> list[dict[str, Any]]:
        head = [p for p in self.head.parameters() if p.requires_grad]
        lr = self.train_cfg.head_lr
        return [{"params": head, **({"lr": lr} if lr is not None else {})}]

    def features(self, inputs: Any) -> torch.Tensor:
        return self.backbone(inputs)

    def forward(self, inputs: Any) -> torch.Tensor:
        return self.head(self.features(inputs))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, task: TaskInfo) -> torch.Tensor:
        """CE over the current task's logits only (`train.loss: current`, the official code) or all seen."""
        if self.train_cfg.loss == "current":
            return F.cross_entropy(logits[:, task.known:task.total], labels - task.known)
        return F.cross_entropy(logits[:, : task.total], labels)

    @torch.no_grad()
    def end_task(self, task: TaskInfo, train_loader: DataLoader) -> dict[str, Any]:
        self.tasks_seen = task.index + 1
        return {}

    # -- persistence -----------------------------------------------------------------------------
    def checkpoint_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        structure = {"head_blocks": self.head.block_sizes(), "tasks_seen": self.tasks_seen}
        tensors = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        return structure, tensors

    def load_checkpoint_state(self, structure: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        device = next(self.backbone.parameters()).device
        self.head.resize_to(structure["head_blocks"])
        self.head.to(device)
        self.head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
        self.tasks_seen = structure["tasks_seen"]

    def restore_trainable_flags(self, task: TaskInfo) -> None:
        """After loading a mid-task checkpoint: old head blocks frozen as `begin_task` left them."""
        if self.train_cfg.freeze_old_head:
            blocks = len(self.head.weights)
            for i in range(blocks):
                trainable = i == blocks - 1
                self.head.weights[i].requires_grad_(trainable)
                self.head.biases[i].requires_grad_(trainable)

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"backbone.{k}": v for k, v in self.backbone.export_state_dict().items()}
        out["head.weight"] = self.head.weight().detach().clone()
        out["head.bias"] = self.head.bias().detach().clone()
        return out

    def num_trainable(self) -> int:
        return sum(p.numel() for g in self.trainable_parameters() for p in g["params"])
