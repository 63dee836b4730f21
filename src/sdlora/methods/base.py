"""The method interface: one trainer loop calls these hooks (the Mammoth pattern). The head and what predicts
are the method's `classifier` component (`sdlora.methods.classifier`), which these hooks drive.

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
    stored_numbers()            every number kept to predict and to keep learning (statistics, bases, ...)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from sdlora.backbones.base import Backbone
from sdlora.collectives import all_reduce_sum
from sdlora.config import TrainConfig
from sdlora.data.scenario import TaskInfo
from sdlora.method_config import ClassifierConfig, ClassifierSupport
from sdlora.methods.class_heads import ClassHead
from sdlora.methods.classifier import Classifier
from sdlora.methods.head import IncrementalHead
from sdlora.methods.prototypes import collect_features
from sdlora.wrapping import module_tensors, plain_tensors


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
        """The means since the last call over every process's steps (each rank saw its own shard of the batches;
        every rank calls this, with the same names)."""
        names = sorted(self.sums)
        if not names:
            return {}
        totals = torch.tensor([[float(self.sums[n]), float(self.counts[n])] for n in names], dtype=torch.float64)
        totals = all_reduce_sum(totals)
        self.sums, self.counts = {}, {}
        return {name: float(total / count) for name, (total, count) in zip(names, totals.tolist(), strict=True)}


def param_group(params: list[Any], lr: float | None = None, **extra: Any) -> dict[str, Any]:
    """An optimiser param group; `lr` None leaves the optimiser's own (train.lr), `extra` adds other settings."""
    return {"params": params, **({"lr": lr} if lr is not None else {}), **extra}


def full_precision(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast off on the tensor's device: losses are computed in float32 outside mixed precision."""
    return torch.autocast(tensor.device.type, enabled=False)


class Method(nn.Module):
    """Default behaviour: frozen backbone + growing linear head trained with cross-entropy."""

    #: the options dataclass (`method.options`), defined in the torch-free `sdlora.methods.options`
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
        """`train`: the run's training settings (`train_cfg`); `classifier`: the `method.classifier` settings,
        how the linear head trains included (None or null fields: this method's defaults); a setting that
        `classifier_support` refuses is a ConfigError naming the key."""
        super().__init__()
        self.backbone = backbone
        self.options = options
        self.train_cfg = train
        # the linear head, the head from class statistics (`method.classifier.kind` prototypes / lda) and their hooks
        self.classifier = Classifier(backbone.feature_dim, self.classifier_support.resolve(classifier))
        self.tasks_seen = 0
        self.step_scalars = StepScalars()  # the engine adds each `training_step`'s scalars here

    @property
    def classifier_cfg(self) -> ClassifierConfig:
        """The resolved `method.classifier` settings."""
        return self.classifier.cfg

    @property
    def head(self) -> IncrementalHead:
        """The growing linear head that carries the training loss."""
        return self.classifier.head

    @property
    def class_head(self) -> ClassHead | None:
        """The head fitted from class statistics that predicts at evaluation (None: the linear head predicts)."""
        return self.classifier.class_head

    @property
    def features_before(self) -> torch.Tensor | None:
        """SDC's reference features of the current task (taken by `before_task`)."""
        return self.classifier.features_before

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
        self.classifier.begin_task(task)

    def before_task(self, task: TaskInfo, train_loader: DataLoader) -> None:
        """Called right before `begin_task` (not when resuming mid-task) with the task's training data.

        With drift compensation, records the task's features under the function that the stored statistics
        describe: drift that the task start itself causes (the official rebuild, a random new direction) is
        then compensated too, not only the drift of training (subclasses call super())."""
        self.classifier.before_task(task, lambda: self._task_features(train_loader))

    def prepare_task(self, task: TaskInfo, train_loader: DataLoader) -> None:
        """Called right after `begin_task` (not when resuming mid-task) with the task's training data.

        With `method.classifier.head_init: class_mean`, sets the new head rows from the class means of the features the
        training starts from (reusing `before_task`'s pass when the task start kept them; subclasses call
        super())."""
        self.classifier.prepare_task(task, lambda: self._task_features(train_loader), self.task_start_keeps_features)

    def _device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def trainable_parameters(self) -> list[dict[str, Any]]:
        return [param_group(self.classifier.trainable_head(), self.classifier_cfg.head_lr)]

    def features(self, inputs: Any) -> torch.Tensor:
        return self.backbone(inputs)

    def forward(self, inputs: Any) -> torch.Tensor:
        """Linear-head logits while training; at evaluation the configured classifier's."""
        return self.classifier.logits(self.features(inputs), self.training)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, task: TaskInfo) -> torch.Tensor:
        """The classifier's: CE over the current task's logits (`method.classifier.loss: current`) or all seen."""
        return self.classifier.loss(logits, labels, task)

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
        classes' statistics (results.json `prototype_shift`: SDC's mean shift, for either kind; `lda_shrinkage`).

        Subclasses that change the function at the end of a task call this last."""
        self.tasks_seen = task.index + 1

        def after() -> tuple[torch.Tensor, torch.Tensor]:  # left in eval mode, as the evaluation that follows
            self.eval()
            return collect_features(self.features, train_loader, self._device())

        return self.classifier.end_task(task, after)

    # -- persistence -----------------------------------------------------------------------------
    def checkpoint_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        structure, tensors = self.classifier.checkpoint_state()
        return {**structure, "tasks_seen": self.tasks_seen}, tensors

    def load_checkpoint_state(self, structure: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.classifier.load_checkpoint_state(structure, tensors, self._device())
        self.tasks_seen = structure["tasks_seen"]

    def restore_trainable_flags(self, task: TaskInfo) -> None:
        """After loading a mid-task checkpoint: old head blocks frozen as `begin_task` left them."""
        self.classifier.restore_trainable_flags()

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
        out["head.weight"], out["head.bias"] = self.classifier.export_head()
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
        when exportable (plus a random feature map's W and b, which the head predicts with and exports refuse);
        else the plain backbone's and every other parameter and persistent buffer of the method (prompts, keys,
        heads, task-identity head, unmerged adapters) except those prediction never reads (`learning_only_tensors`),
        the stored numbers of a classifier from class statistics replacing the linear head (prototypes: the class
        means; LDA / ridge: W and b, and a random feature map's)."""
        if self.exportable:
            feature_map = None if self.class_head is None else self.class_head.feature_map
            lift = 0 if feature_map is None else feature_map.stored_numel()
            return sum(v.numel() for v in self.export_state_dict().values()) + lift
        skip = set(plain_tensors(self.backbone.model)) | {id(t) for t in self.learning_only_tensors()}
        extra = 0
        if self.class_head is not None:
            skip |= set(module_tensors(self.head))
            if isinstance(self.class_head, nn.Module):
                skip |= set(module_tensors(self.class_head))
            extra += self.class_head.stored_numel()
        extra += sum(t.numel() for key, t in module_tensors(self).items() if key not in skip)
        return self.backbone.plain_numel() + extra

    def learning_only_tensors(self) -> list[torch.Tensor]:
        """Tensors of the method's modules that prediction never reads, kept only to keep learning (HiDe-Prompt's
        class statistics, L2P's selection counts): left out of `inference_parameters`, counted by
        `stored_numbers`. A classifier from class statistics says its own share (`ClassHead.stored_numel`)."""
        return []

    def state_outside_modules(self) -> list[torch.Tensor]:
        """Tensors the method keeps to predict or to keep learning as plain attributes, outside its modules'
        parameters and buffers (InfLoRA's subspace bases, SD-LoRA's magnitude anchors)."""
        return []

    def stored_numbers(self) -> int:
        """Every number the continual model keeps to predict and to keep learning, in the form it trains in:
        the parameters and persistent buffers of all its modules (the backbone with its adapters or prompt
        wrappers, the linear head, a classifier's statistics, HiDe-Prompt's task-identity head and class
        statistics, ...) and `state_outside_modules()`, each tensor once.

        Not counted: what lives only while a task trains (SDC's reference features, caches derived from the
        stored tensors) and the optimiser's state. At the end of a task this is what the next one starts from:
        for a prompt method `inference_parameters` plus the linear head a classifier from class statistics
        replaces, the statistics that classifier learns from and every `learning_only_tensors`; for an adapter
        method also W0 with every stored direction and magnitude in place of the merged weights."""
        tensors = module_tensors(self)
        tensors.update((id(t), t) for t in self.state_outside_modules())
        return sum(t.numel() for t in tensors.values())

    def num_trainable(self) -> int:
        return sum(p.numel() for g in self.trainable_parameters() for p in g["params"])

    def scalars(self) -> dict[str, float]:
        """Named scalars worth plotting over training (logged once per epoch): by default the epoch means
        of the scalars `training_step` reported since the last call (subclasses add theirs to super()'s)."""
        return self.step_scalars.pop_means()
