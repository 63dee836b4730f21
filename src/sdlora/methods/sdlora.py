"""SD-LoRA (Wu et al., ICLR 2025) and its variants RR and KD, as one registered method.

Per adapted matrix, while learning task t:  W = W0 + sum_{k<t} alpha_k U_k D_k / n_k + alpha_t U_t D_t (...)
The maths lives in `sdlora.adapters`; this class wires it into the class-incremental lifecycle.

Table 4 ablations (`ablation`, plain variant only):
* ``first_direction_only``: W0 + alpha_1 dir(A_1 B_1): the first task's direction is the only one; later
  tasks start no new direction and only the magnitude keeps learning (with the head).
* ``fixed_old``: W0 + dir_1 + ... + dir_{t-1} + alpha_t dir_t: each old component stays exactly as it was at
  the end of its task (its magnitude is frozen, never rescaled; "dir_k" absorbs alpha_k). A gradient hook
  zeroes the old entries of the magnitude vector and the magnitudes' param group has no weight decay, so
  SGD (momentum), Adam and AdamW leave them untouched; in every mode the task start keeps the stored terms
  as they are (no `official` rebuild).
(The third ablation, "W0 + alpha dir(AB)" with one direction that keeps training, is
`seq_lora` with `decoupled: true`.)

Magnitude anchor (`magnitude_anchor`, lambda >= 0; 0 = off, the paper): while task t trains the loss gains

    lambda * sum_{k<t} (alpha_k - abar_k)^2,   abar_k = alpha_k when task k ended

(re-taken whenever a task start rewrites alpha_k, i.e. the `official` rebuild). Old magnitudes still learn, but
cannot drift far from the value their task was trained and evaluated at. Why: with a cross-entropy head, a
larger alpha_k scales the features up and lowers the loss of every confident sample whatever task k was, so
old magnitudes drift upwards task after task (benchmarks/README.md, "Stability across class orders").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from sdlora.adapters import SDLoRAAdapter
from sdlora.backbones.base import Backbone
from sdlora.config import ClassifierConfig, TrainConfig
from sdlora.data.scenario import TaskInfo
from sdlora.methods.base import Method, StepOutput, param_group
from sdlora.methods.options import SDLoRAOptions
from sdlora.registry import METHODS


@METHODS.register("sdlora")
class SDLoRA(Method):
    """SD-LoRA: frozen past directions, magnitudes that keep learning; RR and KD by options."""

    Options = SDLoRAOptions

    def __init__(self, backbone: Backbone, options: SDLoRAOptions, train: TrainConfig,
                 classifier: ClassifierConfig | None = None) -> None:
        super().__init__(backbone, options, train, classifier)
        config = options.adapter_fields(targets=options.targets or backbone.default_targets)
        self.adapter = SDLoRAAdapter(backbone.model, config)
        self._old_magnitudes_hook: torch.utils.hooks.RemovableHandle | None = None
        self.magnitude_anchors = torch.zeros(0)  # abar_k of the stored tasks (module docstring)

    def begin_task(self, task: TaskInfo) -> None:
        super().begin_task(task)
        ablation = self.options.ablation
        before = self.adapter.magnitudes.alpha.detach().clone()
        # first_direction_only: after task 1 no new direction (the mode's task-start rule still applies);
        # fixed_old: stored terms stay exactly as they were (no official rebuild, magnitudes carried over)
        self.adapter.begin_task(new_direction=not (ablation == "first_direction_only" and self.adapter.num_tasks),
                                preserve_stored=ablation == "fixed_old")
        self.adapter.to(next(self.backbone.parameters()).device)
        if ablation == "fixed_old":
            self._freeze_old_magnitudes()
        self._update_anchors(before)

    @property
    def task_start_keeps_features(self) -> bool:  # type: ignore[override]
        """Only `continuous` starts a task without changing the function (the official rebuild rescales
        every stored term; `paper` adds a random unit-norm direction)."""
        return self.options.current_mode == "continuous"

    def _update_anchors(self, before: torch.Tensor) -> None:
        """abar_k for every stored task: a task that just ended is anchored at its current alpha; a stored
        alpha that the task start rewrote (the official rebuild) is re-anchored at its new value."""
        alpha = self.adapter.magnitudes.alpha.detach()[: self.adapter.num_tasks]
        anchors = alpha.clone()
        kept = min(len(self.magnitude_anchors), len(before), len(alpha))
        unchanged = before[:kept].to(alpha.device) == alpha[:kept]
        anchors[:kept] = torch.where(unchanged, self.magnitude_anchors[:kept].to(alpha.device), alpha[:kept])
        self.magnitude_anchors = anchors

    def training_step(self, batch: tuple[Any, torch.Tensor], task: TaskInfo) -> StepOutput:
        """The default step plus the magnitude anchor lambda * sum_{k<t} (alpha_k - abar_k)^2 when enabled."""
        step = super().training_step(batch, task)
        lam, anchors = self.options.magnitude_anchor, self.magnitude_anchors
        if lam and len(anchors):
            alpha = self.adapter.magnitudes.alpha[: len(anchors)].float()
            penalty = lam * (alpha - anchors.to(alpha.device)).square().sum()
            step.scalars = {**step.scalars, "magnitude_anchor_penalty": penalty.detach()}
            step.loss = step.loss + penalty
        return step

    def _freeze_old_magnitudes(self) -> None:
        """fixed_old: zero the gradient of every stored task's magnitude (the current one, last, trains)."""
        if self._old_magnitudes_hook is not None:
            self._old_magnitudes_hook.remove()
        alpha = self.adapter.magnitudes.alpha
        mask = torch.ones_like(alpha)
        mask[: self.adapter.num_tasks] = 0
        self._old_magnitudes_hook = alpha.register_hook(lambda grad: grad * mask)

    def trainable_parameters(self) -> list[dict[str, Any]]:
        groups = super().trainable_parameters()
        magnitudes = list(self.adapter.magnitudes.parameters())
        ids = {id(p) for p in magnitudes}
        directions = [p for p in self.adapter.trainable_parameters() if id(p) not in ids]
        groups.append(param_group(directions))
        decay = 0.0 if self.options.ablation == "fixed_old" else self.options.magnitude_weight_decay
        groups.append(param_group(magnitudes, self.options.magnitude_lr, weight_decay=decay))
        return groups

    @torch.no_grad()
    def end_task(self, task: TaskInfo, train_loader: DataLoader) -> dict[str, Any]:
        info: dict[str, Any] = {}
        if self.adapter.current_task is not None:  # first_direction_only opens no task after the first
            info.update(self.adapter.end_task())
        info.update(super().end_task(task, train_loader))  # last: prototypes see the frozen function
        info["ranks"] = list(self.adapter.ranks)
        info["magnitudes"] = [float(a) for a in self.adapter.magnitude_values()]
        return info

    def state_outside_modules(self) -> list[torch.Tensor]:
        """The magnitude anchors abar_k (the anchor penalty's targets)."""
        return [self.magnitude_anchors]

    def checkpoint_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        structure, tensors = super().checkpoint_state()
        structure["adapter"] = self.adapter.structure()
        tensors.update({f"adapter.{k}": v for k, v in self.adapter.state_tensors().items()})
        tensors["magnitude_anchors"] = self.magnitude_anchors
        return structure, tensors

    def load_checkpoint_state(self, structure: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        super().load_checkpoint_state(structure, tensors)
        self.adapter.load_state(structure["adapter"],
                                {k[8:]: v for k, v in tensors.items() if k.startswith("adapter.")})
        self.adapter.to(next(self.backbone.parameters()).device)
        stored = self.adapter.magnitudes.alpha.detach()[: self.adapter.num_tasks]
        # older checkpoints have no anchors: the stored alphas
        self.magnitude_anchors = tensors.get("magnitude_anchors", stored).clone()
        if self.options.ablation == "fixed_old" and self.adapter.current_task is not None:
            self._freeze_old_magnitudes()

    def export_backbone(self) -> dict[str, torch.Tensor]:
        """W0 + sum_k alpha_k U_k D_k / n_k merged into each adapted weight: a plain backbone state dict."""
        return self.adapter.merged_state_dict()

    @contextlib.contextmanager
    def deployed(self) -> Iterator[str]:
        """Merged in place (W0 += sum_k alpha_k U_k D_k / n_k, each wrapper then calls its plain Linear),
        unmerged bit for bit on exit (unless it was merged before): the form `sdlora export` writes, measured
        through the adapter itself."""
        was_merged = self.adapter.merged
        self.adapter.merge()
        try:
            yield "merged"
        finally:
            if not was_merged:
                self.adapter.unmerge()

    def scalars(self) -> dict[str, float]:
        """The magnitudes alpha_1..alpha_t (logged per epoch: how old directions are re-weighted)."""
        alpha = self.adapter.magnitudes.alpha.detach().float().cpu().tolist()
        return {**super().scalars(), **{f"magnitude_{k + 1}": a for k, a in enumerate(alpha)}}
