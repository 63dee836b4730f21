"""Full fine-tuning: every backbone weight trains, task after task (the classic lower bound).

Intended for a GPU; on the CPU only tiny models. The checkpoint holds the backbone's weights (they change),
so a run resumes bit for bit; the export is the fine-tuned backbone as a plain timm / transformers state dict.
"""

from __future__ import annotations

from typing import Any

import torch

from sdlora.data.scenario import TaskInfo
from sdlora.methods.base import Method, param_group
from sdlora.methods.options import FinetuneOptions
from sdlora.registry import METHODS


@METHODS.register("finetune")
class Finetune(Method):
    """Unfrozen backbone + growing linear head, trained with cross-entropy."""

    Options = FinetuneOptions

    def _unfreeze(self) -> None:
        for p in self.backbone.model.parameters():
            p.requires_grad_(True)

    def begin_task(self, task: TaskInfo) -> None:
        super().begin_task(task)
        self._unfreeze()

    def trainable_parameters(self) -> list[dict[str, Any]]:
        backbone = [p for p in self.backbone.model.parameters() if p.requires_grad]
        return [*super().trainable_parameters(), param_group(backbone, self.options.backbone_lr)]

    def checkpoint_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        structure, tensors = super().checkpoint_state()
        state = self.backbone.model.state_dict()
        tensors.update({f"backbone.{k}": v.detach().clone() for k, v in state.items()})
        return structure, tensors

    def load_checkpoint_state(self, structure: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        super().load_checkpoint_state(structure, tensors)
        state = {k[9:]: v for k, v in tensors.items() if k.startswith("backbone.")}
        self.backbone.model.load_state_dict(state, strict=True)

    def restore_trainable_flags(self, task: TaskInfo) -> None:
        super().restore_trainable_flags(task)
        self._unfreeze()
