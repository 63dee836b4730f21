"""The method interface: one trainer loop calls these hooks (the Mammoth pattern).

    before_task(task, loader)   optional: look at the task's data with the model as the last task left it
                                (SDC's reference features)
    begin_task(task)            grow the head, add per-task parameters
    prepare_task(task, loader)  optional: look at the task's training data before training (InfLoRA)
    trainable_parameters()      param groups the optimiser updates this task
    forward(inputs)             logits over every class seen so far
    loss(logits, labels, task)  the training loss
    training_step(batch, task)  one step's loss and named scalars (default: forward + loss); override to add
                                auxiliary losses or extra passes (prompt methods' key pull, a frozen query)
    end_task(task, loader)      freeze, fit the class statistics (prototypes, LDA), absorb...; returns a dict logged
                                in results.json
    checkpoint_state()          (structure: JSON, tensors) - everything needed to rebuild and resume
    load_checkpoint_state(...)
    export_state_dict()         merged backbone + head, loadable by plain timm / transformers
    deployed()                  context: the method in its deployed form for prediction (inference cost)
    inference_parameters()      numbers stored to predict in that form
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from sdlora.backbones.base import Backbone
from sdlora.config import TrainConfig
from sdlora.data.scenario import TaskInfo
from sdlora.method_config import ClassifierConfig, ClassifierSupport
from sdlora.methods.class_heads import ClassHead, build_class_head
from sdlora.methods.head import IncrementalHead
from sdlora.methods.prototypes import ClassPrototypes, collect_features
from sdlora.wrapping import plain_tensors


@dataclass
class StepOutput:
    """What one training step returns: the loss to minimise and named scalars worth logging (floats, or
    0-dim tensors: those are summed on their device and read once per epoch, no host sync per step)."""

    loss: torch.Tensor
    scalars: Mapping[str, float | torch.Tensor] = field(default_factory=dict)


class StepScalars:
    """Running means of the scalars that training steps report, read (and reset) once per epoch."""

    def __init__(self) -> None:
        self.sums: dict[str, float | torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, scalars: Mapping[str, float | torch.Tensor]) -> None:
        for name, value in scalars.items():
            value = value.detach().float() if isinstance(value, torch.Tensor) else float(value)
            self.sums[name] = self.sums.get(name, 0.0) + value
            self.counts[name] = self.counts.get(name, 0) + 1

    def pop_means(self) -> dict[str, float]:
        means = {name: float(total) / self.counts[name] for name, total in self.sums.items()}
        self.sums, self.counts = {}, {}
        return means


def param_group(params: list[Any], lr: float | None = None, **extra: Any) -> dict[str, Any]:
    """An optimiser param group; `lr` None leaves the optimiser's own (train.lr), `extra` adds other settings."""
    return {"params": params, **({"lr": lr} if lr is not None else {}), **extra}


def full_precision(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast off on the tensor's device: losses are computed in float32 outside mixed precision."""
    return torch.autocast(tensor.device.type, enabled=False)


class Method(nn.Module):
    """Default behaviour: frozen backbone + growing linear head trained with cross-entropy."""

    Options: type
    #: the trainer trains only when this is true (prototype methods set it to False)
    trains: bool = True
    #: the trained function is a plain backbone + linear head, so `sdlora export` can write it (prompt
    #: methods set it to False: their prompts are chosen per input)
    exportable: bool = True
    #: the `method.classifier` settings this method honours, its defaults, and why it refuses the others
    classifier_support: ClassifierSupport = ClassifierSupport()

    def __init__(self, backbone: Backbone, options: Any, train: TrainConfig,
                 classifier: ClassifierConfig | None = None) -> None:
        """`classifier`: the `method.classifier` settings (None or null fields: this method's defaults); a
        setting that `classifier_support` refuses is a ConfigError naming the key."""
        super().__init__()
        self.backbone = backbone
        self.options = options
        self.train_cfg = train
        self.classifier_cfg = self.classifier_support.resolve(classifier)
        self.head = IncrementalHead(backbone.feature_dim)
        self.tasks_seen = 0
        # the classifier fitted from class statistics (`method.classifier.kind` prototypes / lda); None: linear head
        self.class_head: ClassHead | None = build_class_head(backbone.feature_dim, self.classifier_cfg)
        self.features_before: torch.Tensor | None = None  # SDC: this task's features before training
        self._start_features: tuple[torch.Tensor, torch.Tensor] | None = None  # before_task's pass
        self.step_scalars = StepScalars()  # the engine adds each `training_step`'s scalars here

    # -- lifecycle -------------------------------------------------------------------------------
    #: whether `begin_task` leaves `features(x)` unchanged (new head rows, a zero-initialised new term). When
    #: false, SDC's reference features are taken before `begin_task` and the head init takes its own pass.
    task_start_keeps_features: bool = True

    def _task_features(self, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
        was_training = self.training
        self.eval()
        features, labels = collect_features(self.features, loader, self._device())
        self.train(was_training)
        return features, labels

    def begin_task(self, task: TaskInfo) -> None:
        self.head.grow(task.size, freeze_old=self.train_cfg.freeze_old_head)

    def before_task(self, task: TaskInfo, train_loader: DataLoader) -> None:
        """Called right before `begin_task` (not when resuming mid-task) with the task's training data.

        With drift compensation, records the task's features under the function that the stored statistics
        describe: drift that the task start itself causes (the official rebuild, a random new direction) is
        then compensated too, not only the drift of training (subclasses call super())."""
        self._start_features = None
        if self.class_head is not None and self.classifier_cfg.drift == "sdc" and task.index > 0:
            self._start_features = self._task_features(train_loader)
            self.features_before = self._start_features[0]

    def prepare_task(self, task: TaskInfo, train_loader: DataLoader) -> None:
        """Called right after `begin_task` (not when resuming mid-task) with the task's training data.

        With `method.classifier.head_init: class_mean`, sets the new head rows from the class means of the features the
        training starts from (reusing `before_task`'s pass when the task start kept them; subclasses call
        super())."""
        reusable = self._start_features if self.task_start_keeps_features else None
        self._start_features = None
        if self.classifier_cfg.head_init == "class_mean" and self.head.num_classes == task.total:
            self._init_head_rows(*(reusable or self._task_features(train_loader)), task)

    @torch.no_grad()
    def _init_head_rows(self, features: torch.Tensor, labels: torch.Tensor, task: TaskInfo) -> None:
        """Rows of the new task = scale * mu_c / (||mu_c|| * mean ||f||): logits start as scaled cosines."""
        means = ClassPrototypes(features.shape[1]).to(features.device)
        means.fit(features, labels, task.known, task.total)
        rows = F.normalize(means.means[task.known:task.total], dim=-1)
        rows *= self.classifier_cfg.head_init_scale / features.norm(dim=-1).mean()
        self.head.weights[-1].copy_(rows.to(self.head.weights[-1]))
        self.head.biases[-1].zero_()

    def _device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def trainable_parameters(self) -> list[dict[str, Any]]:
        head = [p for p in self.head.parameters() if p.requires_grad]
        return [param_group(head, self.train_cfg.head_lr)]

    def features(self, inputs: Any) -> torch.Tensor:
        return self.backbone(inputs)

    def forward(self, inputs: Any) -> torch.Tensor:
        """Linear-head logits while training; at evaluation the configured classifier's."""
        features = self.features(inputs)
        if self.class_head is not None and not self.training:
            return self.class_head.logits(features)
        return self.head(features)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, task: TaskInfo) -> torch.Tensor:
        """CE over the current task's logits only (`train.loss: current`, the official code) or all seen."""
        if self.train_cfg.loss == "current":
            return F.cross_entropy(logits[:, task.known:task.total], labels - task.known)
        return F.cross_entropy(logits[:, : task.total], labels)

    def training_step(self, batch: tuple[Any, torch.Tensor], task: TaskInfo) -> StepOutput:
        """One step on `(inputs, labels)` (already on the device, called under the engine's autocast).

        Default: logits = forward(inputs); loss(logits, labels, task) in float32 with autocast off.
        Overrides return extra terms in the loss and name them in `scalars` (their epoch means are logged
        as `method/<name>`)."""
        inputs, labels = batch
        logits = self(inputs)
        with full_precision(logits):
            return StepOutput(self.loss(logits.float(), labels, task))

    @torch.no_grad()
    def end_task(self, task: TaskInfo, train_loader: DataLoader) -> dict[str, Any]:
        """Counts the task; with a classifier from class statistics, moves old means (SDC) and adds the new
        classes' statistics (results.json `prototype_shift`: SDC's mean shift, for either kind).

        Subclasses that change the function at the end of a task call this last."""
        self.tasks_seen = task.index + 1
        info: dict[str, Any] = {}
        if self.class_head is not None:
            self.eval()
            after, labels = collect_features(self.features, train_loader, self._device())
            if self.features_before is not None:
                sigma = self.classifier_cfg.sdc_sigma
                assert sigma is not None  # resolved: sdc's sigma is filled in wherever drift is taken
                info["prototype_shift"] = self.class_head.compensate_drift(self.features_before, after,
                                                                           task.known, sigma)
                self.features_before = None
            self.class_head.fit(after, labels, task.known, task.total)
        return info

    # -- persistence -----------------------------------------------------------------------------
    def checkpoint_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        structure = {"head_blocks": self.head.block_sizes(), "tasks_seen": self.tasks_seen}
        tensors = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        if self.class_head is not None:
            head_structure, head_tensors = self.class_head.checkpoint_state()
            structure.update(head_structure)
            tensors.update(head_tensors)
        if self.features_before is not None:
            tensors["features_before"] = self.features_before
        return structure, tensors

    def load_checkpoint_state(self, structure: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        device = self._device()
        self.head.resize_to(structure["head_blocks"])
        self.head.to(device)
        self.head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
        self.tasks_seen = structure["tasks_seen"]
        if self.class_head is not None:
            self.class_head.load_checkpoint_state(structure, tensors)
        self.features_before = tensors.get("features_before")

    def restore_trainable_flags(self, task: TaskInfo) -> None:
        """After loading a mid-task checkpoint: old head blocks frozen as `begin_task` left them."""
        if self.train_cfg.freeze_old_head:
            blocks = len(self.head.weights)
            for i in range(blocks):
                trainable = i == blocks - 1
                self.head.weights[i].requires_grad_(trainable)
                self.head.biases[i].requires_grad_(trainable)

    def export_backbone(self) -> dict[str, torch.Tensor]:
        """The backbone as a plain timm / transformers state dict (adapter methods merge first)."""
        return self.backbone.export_state_dict()

    def check_exportable(self) -> None:
        """A ValueError naming the reason when the method cannot be written as a plain backbone + head."""
        if not self.exportable:
            raise ValueError(f"{type(self).__name__}: the prompts are chosen per input and cannot be merged into a "
                             "plain backbone + linear head; use the run folder itself (sdlora predict/eval)")
        if self.class_head is not None and self.class_head.feature_map is not None:
            raise ValueError("the classifier applies a fixed random feature map (classifier.random_features) before "
                             "its linear head, so its logits are not linear in the feature and no export format (one "
                             "linear head over the feature) can hold it; use the run folder itself (sdlora predict / "
                             "eval, sdlora.load)")

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """`backbone.*` + `head.*`; with a classifier from class statistics its (W, b), applied as its
        `export_kind` says (prototypes: unit-norm class means, LDA: W and b; both on the L2-normalised feature)."""
        out = {f"backbone.{k}": v for k, v in self.export_backbone().items()}
        if self.class_head is not None:
            out["head.weight"], out["head.bias"] = self.class_head.export_head()
        else:
            out["head.weight"] = self.head.weight().detach().clone()
            out["head.bias"] = self.head.bias().detach().clone()
        return out

    # -- inference cost (sdlora.engine.cost) -----------------------------------------------------
    @contextlib.contextmanager
    def deployed(self) -> Iterator[str]:
        """Inside: `forward` runs in the form the method is deployed in; yields that form's name.

        Exportable methods: "merged", the model `sdlora export` writes (the plain architecture with the merged
        weights, which have W0's shapes, and the method's classifier): the backbone's wrappers are bypassed.
        Others: "as trained" (every pass and parameter the method predicts with: query pass, prompts, keys).
        Methods that can merge in place override this to measure their own merged path."""
        if not self.exportable:
            yield "as trained"
            return
        with self.backbone.plain():
            yield "merged"

    def inference_parameters(self) -> int:
        """Numbers stored to predict in the `deployed` form: the export's tensors (merged backbone + head)
        when exportable; else the plain backbone's and every other parameter of the method (prompts, keys,
        heads, unmerged adapters), the stored numbers of a classifier from class statistics replacing the linear
        head (prototypes: the class means; LDA / ridge: W and b, and a random feature map's W and b)."""
        if self.exportable:
            feature_map = None if self.class_head is None else self.class_head.feature_map
            lift = 0 if feature_map is None else feature_map.stored_numel()  # predicts with it, exports refuse it
            return sum(v.numel() for v in self.export_state_dict().values()) + lift
        plain = set(plain_tensors(self.backbone.model))  # ids
        if self.class_head is not None:
            plain |= {id(p) for p in self.head.parameters()}
        extra = sum(p.numel() for p in self.parameters() if id(p) not in plain)
        if self.class_head is not None:
            extra += self.class_head.stored_numel()
        return self.backbone.plain_numel() + extra

    def num_trainable(self) -> int:
        return sum(p.numel() for g in self.trainable_parameters() for p in g["params"])

    def scalars(self) -> dict[str, float]:
        """Named scalars worth plotting over training (logged once per epoch): by default the epoch means
        of the scalars `training_step` reported since the last call (subclasses add theirs to super()'s)."""
        return self.step_scalars.pop_means()
