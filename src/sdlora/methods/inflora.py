"""InfLoRA (Liang and Li, CVPR 2024): per task a LoRA on k and v whose A is designed, only B trains.

Per task t and adapted matrix:  W = W0 + sum_{k<t} B_k A_k (merged into W0) + B_t A_t, with
A_t (r x in) = the top-r eigenvectors of the task's input covariance after the earlier tasks' input subspace
M is projected out (so A_t M = 0: the new update cannot change outputs on old inputs lying in span(M)), scaled
by 1/sqrt(3) as in the released code; B_t starts at 0 and is the only adapter parameter that trains. After
the task, B_t A_t is merged into W0 and M grows by DualGPM (energy threshold lamb -> lame over the tasks;
default 0.95 -> 1.0 as the release's CIFAR-100 and DomainNet configs, 0.98 -> 1.0 in its ImageNet-R ones).
The authors' per-benchmark settings (optimiser, lr, schedule, epochs, rank, thresholds) are the configs in
configs/vision/inflora/.
The maths is in `sdlora.adapters.subspace`; see its docstring for `spectrum` and the released code's quirks.

A is designed in `prepare_task` (the trainer calls it after `begin_task` with the task's training data),
from the inputs of each adapted Linear collected with forward hooks; text padding tokens are masked out.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from sdlora.adapters.plain_lora import PlainLoRA
from sdlora.adapters.subspace import (
    SPECTRA,
    collect_covariances,
    design_down,
    threshold_for_task,
    update_basis,
)
from sdlora.adapters.targets import parse_target
from sdlora.backbones.base import Backbone
from sdlora.config import ClassifierConfig, TrainConfig
from sdlora.data.scenario import TaskInfo
from sdlora.devices import move_to
from sdlora.methods.base import Method
from sdlora.methods.options import InfLoRAOptions
from sdlora.registry import METHODS

#: default query Linear name -> the key Linear beside it (the backbones' default targets are q and v)
QUERY_TO_KEY: dict[str, str] = {
    ".query": ".key",
    ".q_lin": ".k_lin",
    ".attn.q": ".attn.k",
    ".query_proj": ".key_proj",
}


def key_value_targets(default_targets: list[str]) -> list[str]:
    """InfLoRA's k and v targets from a backbone's q and v ones: ``qkv[q,v]`` -> ``qkv[k,v]``, and a
    query Linear pattern -> its key Linear (``*.attention.self.query`` -> ``*.attention.self.key``)."""
    out = []
    for text in default_targets:
        target = parse_target(text)
        if target.slices is not None:
            slices = sorted({"k" if s == "q" else s for s in target.slices}, key="qkv".index)
            out.append(f"{target.pattern}[{','.join(slices)}]")
            continue
        pattern = target.pattern
        for query, key in QUERY_TO_KEY.items():
            if pattern.endswith(query):
                pattern = pattern[: -len(query)] + key
                break
        out.append(pattern)
    return list(dict.fromkeys(out))


@METHODS.register("inflora")
class InfLoRA(Method):
    """InfLoRA: designed A (orthogonal to old tasks' input subspace), trained B, merged after each task."""

    Options = InfLoRAOptions

    def __init__(self, backbone: Backbone, options: InfLoRAOptions, train: TrainConfig,
                 classifier: ClassifierConfig | None = None) -> None:
        super().__init__(backbone, options, train, classifier)
        targets = options.targets or key_value_targets(backbone.default_targets)
        self.lora = PlainLoRA(backbone.model, targets, options.rank, init="zeros")
        for p in self.lora.factor_parameters("down"):
            p.requires_grad_(False)
        self.subspaces: dict[str, torch.Tensor] = {
            name: torch.zeros(w.in_features, 0, dtype=torch.float64)
            for name, w in self.lora.wrappers.items()}
        self.prepared = False

    def _covariances(self, loader: DataLoader) -> dict[str, torch.Tensor]:
        was_training = self.training
        self.eval()
        device = self._device()
        try:
            covariances = collect_covariances(self.lora.wrappers, self.backbone,
                                              (move_to(inputs, device) for inputs, _ in loader))
        finally:
            self.train(was_training)
        missing = sorted(set(self.lora.wrappers) - set(covariances))
        if missing:
            raise RuntimeError(f"InfLoRA: no inputs reached the adapted layers {missing[:3]} (empty loader?)")
        return covariances

    def begin_task(self, task: TaskInfo) -> None:
        super().begin_task(task)
        self.lora.reset_factors("zeros")
        self.prepared = False

    @torch.no_grad()
    def prepare_task(self, task: TaskInfo, train_loader: DataLoader) -> None:
        """A = top-r eigenvectors of P G P per adapted Linear (the same A for its k and v slices)."""
        super().prepare_task(task, train_loader)
        spectrum = SPECTRA[self.options.spectrum]
        for name, cov in self._covariances(train_loader).items():
            wrapper = self.lora.wrappers[name]
            basis = self.subspaces[name].to(cov.device)
            down = design_down(spectrum(cov), basis, self.options.rank) * self.options.down_scale
            wrapper.down.copy_(down.to(wrapper.down.dtype)[None].expand_as(wrapper.down))
        self.prepared = True

    def trainable_parameters(self) -> list[dict[str, Any]]:
        if not self.prepared:
            raise RuntimeError("InfLoRA designs A from the task's data in prepare_task(task, loader); "
                               "call it after begin_task")
        return [*super().trainable_parameters(), {"params": self.lora.factor_parameters("up")}]

    @torch.no_grad()
    def end_task(self, task: TaskInfo, train_loader: DataLoader) -> dict[str, Any]:
        """DualGPM update from the trained model's inputs, then W0 += B A (exact) and B = 0."""
        threshold = threshold_for_task(task.index, task.num_tasks, self.options.threshold,
                                       self.options.threshold_end)
        spectrum = SPECTRA[self.options.spectrum]
        for name, cov in self._covariances(train_loader).items():
            self.subspaces[name] = update_basis(self.subspaces[name].to(cov.device), spectrum(cov), threshold)
        self.lora.merge_task()
        self.prepared = False
        info = super().end_task(task, train_loader)
        dims = [int(m.shape[1]) for m in self.subspaces.values()]
        info.update({"threshold": threshold, "subspace_dims": dims})
        return info

    def state_outside_modules(self) -> list[torch.Tensor]:
        """The input-subspace bases M of every adapted Linear (what the next task's A is designed against).
        The merge records (`PlainLoRA.merged_factors`, kept so that a resumed run replays its merges bit for
        bit) are not counted: the merged weights already hold them."""
        return list(self.subspaces.values())

    # -- persistence -----------------------------------------------------------------------------
    def checkpoint_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        structure, tensors = super().checkpoint_state()
        structure.update({"merged_tasks": len(self.lora.merged_factors), "prepared": self.prepared})
        tensors.update({f"lora.{k}": v for k, v in self.lora.state_tensors().items()})
        tensors.update({f"subspace.{name}": m.clone() for name, m in self.subspaces.items()})
        return structure, tensors

    def load_checkpoint_state(self, structure: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        super().load_checkpoint_state(structure, tensors)
        self.lora.load_state_tensors({k[5:]: v for k, v in tensors.items() if k.startswith("lora.")},
                                     structure["merged_tasks"])
        self.subspaces = {name: tensors[f"subspace.{name}"].clone() for name in self.lora.wrappers}
        self.prepared = structure["prepared"]

    def export_backbone(self) -> dict[str, torch.Tensor]:
        return self.lora.merged_state_dict()
