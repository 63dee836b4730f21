"""A method's classifier as one component: the growing linear head that carries the training loss and, with
`method.classifier.kind` prototypes, lda or ridge, the head fitted from class statistics that predicts at evaluation
(kind aligned: the linear head itself, realigned from class statistics after each task).

A method composes one (`Method.classifier`) and calls its hooks from its own lifecycle:

    before_task(task, pass_)        drift sdc / affine, from the second task: the task's features under the
                                    function the stored statistics describe (the drift's "before")
    begin_task(task)                new head rows; old rows frozen with `method.classifier.freeze_old_head`
    prepare_task(task, pass_, kept) head_init: class_mean: the new rows from the class means of the features
                                    training starts from, rows = scale * mu_c / (||mu_c|| * mean ||f||)
    end_task(task, pass_)           SDC (or the affine map) moves old classes' statistics by the drift of this
                                    task's samples; the new classes' statistics are fitted (from the pass after
                                    training)
    logits(features, training)      the linear head while training, the statistics head (if any) at evaluation
    loss(logits, labels, task)      CE over the current task's logits (`method.classifier.loss: current`) or all
                                    seen

`pass_` is a callable that makes the no-gradient feature pass over the task's training data when (and only when)
the classifier needs it; `kept`: the task start left the features as `before_task` saw them, so that pass is
reused. Checkpoint keys (`head.*`, `head_blocks`, `features_before`, the statistics head's) are the method's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sdlora.data.scenario import TaskInfo
from sdlora.method_config import ClassifierConfig
from sdlora.methods.class_heads import ClassHead, build_class_head
from sdlora.methods.head import IncrementalHead
from sdlora.methods.prototypes import ClassPrototypes

#: a no-gradient feature pass over the task's training data: (features, labels)
FeaturePass = Callable[[], tuple[torch.Tensor, torch.Tensor]]


def _sdc(head: ClassHead, before: torch.Tensor, after: torch.Tensor, upto: int, cfg: ClassifierConfig) -> float:
    assert cfg.sdc_sigma is not None  # resolved wherever drift is sdc
    return head.compensate_drift(before, after, upto, cfg.sdc_sigma)


def _affine(head: ClassHead, before: torch.Tensor, after: torch.Tensor, upto: int, cfg: ClassifierConfig) -> float:
    assert cfg.affine_ridge is not None  # resolved wherever drift is affine
    return head.compensate_affine(before, after, upto, cfg.affine_ridge)


#: `drift` -> how it moves the old classes' statistics (head, before, after, classes [0, upto), the settings),
#: returning the mean shift of the class means
DRIFTS: dict[str, Callable[[ClassHead, torch.Tensor, torch.Tensor, int, ClassifierConfig], float]] = {
    "sdc": _sdc, "affine": _affine}


class Classifier(nn.Module):
    """The linear head, the optional head from class statistics and what moves them across tasks."""

    def __init__(self, dim: int, cfg: ClassifierConfig) -> None:
        """`cfg`: the resolved `method.classifier` settings (what predicts, and how the linear head trains:
        `loss`, `freeze_old_head`, `head_lr`)."""
        super().__init__()
        assert cfg.loss is not None and cfg.freeze_old_head is not None, "resolve the classifier settings first"
        self.cfg = cfg
        self.head = IncrementalHead(dim)
        self.class_head: ClassHead | None = build_class_head(dim, cfg, self.head)
        self.features_before: torch.Tensor | None = None  # SDC: this task's features before training
        self._start_features: tuple[torch.Tensor, torch.Tensor] | None = None  # before_task's pass

    # -- lifecycle -------------------------------------------------------------------------------
    def before_task(self, task: TaskInfo, pass_: FeaturePass) -> None:
        self._start_features = None
        if self.class_head is not None and self.cfg.drift in DRIFTS and task.index > 0:
            self._start_features = pass_()
            self.features_before = self._start_features[0]

    def begin_task(self, task: TaskInfo) -> None:
        self.head.grow(task.size, freeze_old=bool(self.cfg.freeze_old_head))

    def prepare_task(self, task: TaskInfo, pass_: FeaturePass, kept: bool) -> None:
        reusable = self._start_features if kept else None
        self._start_features = None
        if self.cfg.head_init == "class_mean" and self.head.num_classes == task.total:
            self.init_rows(*(reusable or pass_()), task)

    @torch.no_grad()
    def init_rows(self, features: torch.Tensor, labels: torch.Tensor, task: TaskInfo) -> None:
        """Rows of the new task = scale * mu_c / (||mu_c|| * mean ||f||): logits start as scaled cosines."""
        means = ClassPrototypes(features.shape[1]).to(features.device)
        means.fit(features, labels, task.known, task.total)
        rows = F.normalize(means.means[task.known:task.total], dim=-1)
        assert self.cfg.head_init_scale is not None  # resolved wherever head_init is
        rows *= self.cfg.head_init_scale / features.norm(dim=-1).mean()
        self.head.weights[-1].copy_(rows.to(self.head.weights[-1]))
        self.head.biases[-1].zero_()

    @torch.no_grad()
    def end_task(self, task: TaskInfo, pass_: FeaturePass) -> dict[str, Any]:
        """The drift on old classes (when the task's "before" features were taken), then the new classes' statistics,
        from `pass_` (made only with a statistics head); returns results.json's `prototype_shift` and what the
        statistics head reports."""
        info: dict[str, Any] = {}
        if self.class_head is None:
            return info
        after, labels = pass_()
        if self.features_before is not None:
            assert self.cfg.drift is not None
            info["prototype_shift"] = DRIFTS[self.cfg.drift](self.class_head, self.features_before, after,
                                                             task.known, self.cfg)
            self.features_before = None
        info.update(self.class_head.fit(after, labels, task.known, task.total))
        return info

    # -- training and prediction -----------------------------------------------------------------
    def logits(self, features: torch.Tensor, training: bool) -> torch.Tensor:
        if self.class_head is not None and not training:
            return self.class_head.logits(features)
        return self.head(features)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, task: TaskInfo) -> torch.Tensor:
        """CE over the current task's logits only (`loss: current`, the official code) or all seen."""
        if self.cfg.loss == "current":
            return F.cross_entropy(logits[:, task.known:task.total], labels - task.known)
        return F.cross_entropy(logits[:, : task.total], labels)

    def trainable_head(self) -> list[nn.Parameter]:
        return [p for p in self.head.parameters() if p.requires_grad]

    def restore_trainable_flags(self) -> None:
        """After loading a mid-task checkpoint: old head blocks frozen as `begin_task` left them."""
        if self.cfg.freeze_old_head:
            blocks = len(self.head.weights)
            for i in range(blocks):
                self.head.weights[i].requires_grad_(i == blocks - 1)
                self.head.biases[i].requires_grad_(i == blocks - 1)

    def export_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, b) of what predicts: the statistics head's (applied as its `export_kind` says) or the linear head."""
        if self.class_head is not None:
            return self.class_head.export_head()
        return self.head.weight().detach().clone(), self.head.bias().detach().clone()

    # -- persistence -----------------------------------------------------------------------------
    def checkpoint_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        structure: dict[str, Any] = {"head_blocks": self.head.block_sizes()}
        tensors = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        if self.class_head is not None:
            head_structure, head_tensors = self.class_head.checkpoint_state()
            structure.update(head_structure)
            tensors.update(head_tensors)
        if self.features_before is not None:
            tensors["features_before"] = self.features_before
        return structure, tensors

    def load_checkpoint_state(self, structure: dict[str, Any], tensors: dict[str, torch.Tensor],
                              device: torch.device) -> None:
        self.head.resize_to(structure["head_blocks"])
        self.head.to(device)
        self.head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
        if self.class_head is not None:
            self.class_head.load_checkpoint_state(structure, tensors)
        self.features_before = tensors.get("features_before")
