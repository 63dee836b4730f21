"""SimpleCIL (Zhou et al., 2023): frozen backbone, class prototypes, cosine nearest-class-mean. No training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from sdlora.backbones.base import Backbone
from sdlora.config import TrainConfig
from sdlora.data.scenario import TaskInfo
from sdlora.methods.base import Method
from sdlora.methods.prototypes import ClassPrototypes
from sdlora.registry import METHODS


@METHODS.register("ncm")
class NCM(Method):
    """Frozen backbone + cosine nearest-class-mean over class prototypes (SimpleCIL); no training."""

    trains = False

    @dataclass
    class Options:
        pass

    def __init__(self, backbone: Backbone, options: Options, train: TrainConfig) -> None:
        super().__init__(backbone, options, train)
        self.prototypes = ClassPrototypes(backbone.feature_dim)

    def begin_task(self, task: TaskInfo) -> None:
        pass

    def trainable_parameters(self) -> list[dict[str, Any]]:
        return []

    def forward(self, inputs: Any) -> torch.Tensor:
        return self.prototypes.cosine_logits(self.features(inputs))

    @torch.no_grad()
    def end_task(self, task: TaskInfo, train_loader: DataLoader) -> dict[str, Any]:
        self.eval()
        self.prototypes.fit(self.features, train_loader, task.known, task.total)
        return super().end_task(task, train_loader)

    def checkpoint_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {"classes": self.prototypes.num_classes, "tasks_seen": self.tasks_seen}, {
            "prototypes": self.prototypes.means}

    def load_checkpoint_state(self, structure: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.prototypes.resize_to(structure["classes"])
        self.prototypes.means.copy_(tensors["prototypes"])
        self.tasks_seen = structure["tasks_seen"]

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """Backbone + unit-norm prototypes as `head.weight` (logits = cosine: normalise the features first)."""
        import torch.nn.functional as F

        out = {f"backbone.{k}": v for k, v in self.backbone.export_state_dict().items()}
        out["head.weight"] = F.normalize(self.prototypes.means, dim=-1).clone()
        out["head.bias"] = torch.zeros(self.prototypes.num_classes)
        return out
