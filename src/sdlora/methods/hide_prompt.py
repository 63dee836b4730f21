"""HiDe-Prompt (Wang et al., NeurIPS 2023): hierarchical decomposition into within-task prediction (WTP),
task-identity inference (TII) and task-adaptive prediction (TAP), with statistics instead of stored samples.

    WTP   task t trains its own prefix E^t (keys and values at e_layers, as DualPrompt's E-prompts) and the head:
            P^t = (1 - m) E^t + m mean_{j<t} sg(E^j)        (prompt momentum m; E^t <- P^t after the task)
            loss = CE(head(f(x; P^t))[current task], y) + lambda CE(S, I),  S = M M^T / tau,  M = [mu_1..mu_K; f_batch]
          (the contrastive term pushes the batch's prompted features away from the class means mu of the
          earlier tasks and from each other; f = the pooled prompted feature, unnormalised, as the release)
    TII   g(x) = the frozen backbone's feature (no prompt); a residual MLP + linear head over all classes,
            c_hat = argmax h_tii(g(x)),   t_hat(x) = the task that owns c_hat
          trained after each task on the task's frozen features (CE over its classes), then aligned on
          pseudo-features of every seen class drawn from the statistics of the frozen features
          (`class_stats.align_classifier`)
    TAP   prediction = head(f(x; E^{t_hat(x)})); after each task the head is aligned on pseudo-features drawn
          from the statistics of the prompted features of every seen class

The statistics (`statistics`; one kind for TII and TAP, as the release's single --ca_storage_efficient_method):
'multi_centroid' (the release's default, kept by all its training scripts): k-means with K = `centroids` = 10
per class, each cluster's mean and per-dimension variance, pseudo-features from N(mu_ck, diag(var_ck) + eps I)
for every cluster of non-zero variance, and the contrastive term against every cluster mean of the earlier
classes; 'covariance' (the paper's Gaussian N(mu_c, Sigma_c)); 'variance' (its diagonal). Only these statistics
are kept, no samples. The task's frozen features live only inside `end_task`, as in the release's separate TII
run that trains on the task's data.

Defaults are the release's ImageNet-R run (thu-ml/HiDe-Prompt, training_scripts/train_imr_vit.sh with
configs/imr_hideprompt_5e.py). Differences from the release: its TII stage trains for 20 epochs on augmented
images; here on the task's features from the end-of-task pass (one view, the trainer's `end_task` loader). Its
k-means is scikit-learn's, unseeded; here a torch k-means seeded from the run's seed (`sdlora.methods.kmeans`
lists what differs). The contrastive term is over each process's micro-batch (the release: each GPU's batch).
The release reshapes its [layers, 2, B, L, ...] prefix tensor to [layers, B, 2, L, ...] without a permute
(peft/prompt/hide_prompt.py, lines 115-118): sample b gets the prefix halves of flat positions 2b, 2b+1 of the
(key/value, sample) grid, so with one prompt for the batch (training) its first half attends with the key half as
keys and values, its second half with the value half, and with per-sample prompts (test) samples take other
samples' halves; here every sample gets (P_k, P_v), as prefix-tuning means (and as DualPrompt here). The TII head
and both alignments train with the method's own optimisers inside `end_task`. The alignment batches are the
release's effective ones, 120 pseudo-features per step for the head and 24 for the TII head (`ca_batch_size`,
`tii_ca_batch_size`): its 8 processes draw the same pools, so their averaged step is one process's (Options).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from sdlora.backbones.base import Backbone
from sdlora.config import ClassifierConfig, TrainConfig
from sdlora.data.scenario import TaskInfo
from sdlora.method_config import ClassifierSupport
from sdlora.methods.base import StepOutput, full_precision
from sdlora.methods.class_stats import align_classifier, class_statistics
from sdlora.methods.head import IncrementalHead
from sdlora.methods.options import HiDePromptOptions
from sdlora.methods.prompting import TaskPromptMethod
from sdlora.methods.prototypes import collect_features
from sdlora.prompts.pool import TaskPrefixes, layer_prefixes
from sdlora.registry import METHODS

GRAD_CLIP = 1.0  # release: configs/imr_hideprompt_5e.py:24 (--clip-grad 1.0), also for the TII stage


def contrastive(features: torch.Tensor, means: torch.Tensor, temperature: float) -> torch.Tensor:
    """CE(S, I) with S = M M^T / tau over the rows of M = [means; features] (the release's `orth_loss`)."""
    rows = torch.cat([means.to(features), features])
    similarity = rows @ rows.T / temperature
    return F.cross_entropy(similarity, torch.arange(rows.shape[0], device=rows.device))


class TaskIdentity(nn.Module):
    """h_tii(g) = head(LayerNorm(g + MLP(g))) with MLP = Linear(D, k D), GELU, Linear(k D, D) for hidden [k]
    (the release's `MlpMapping`, vits/hide_prompt_vision_transformer.py); hidden [] = a linear head on g."""

    def __init__(self, dim: int, hidden: list[int]) -> None:
        super().__init__()
        widths = [dim, *(dim * k for k in hidden), dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers += [nn.Linear(a, b)] + ([nn.GELU()] if i < len(widths) - 2 else [])
        self.mlp = nn.Sequential(*layers) if hidden else None
        self.norm = nn.LayerNorm(dim, eps=1e-6) if hidden else nn.Identity()
        self.head = IncrementalHead(dim)
        for layer in self.modules():
            if isinstance(layer, nn.Linear):  # timm's ViT init (trunc normal 0.02, zero bias), as the release
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.requires_grad_(False)  # trained inside `end_task` only, never by the trainer's optimiser

    def grow(self, n_new: int) -> None:
        self.head.grow(n_new, freeze_old=False)
        with torch.no_grad():
            nn.init.trunc_normal_(self.head.weights[-1], std=0.02)
        self.requires_grad_(False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        mapped = features if self.mlp is None else self.norm(features + self.mlp(features))
        return self.head(mapped)


@METHODS.register("hide_prompt")
class HiDePrompt(TaskPromptMethod):
    """HiDe-Prompt: per-task prefixes (WTP), a TII head on frozen features, heads aligned from class statistics.
    While a task trains its features use P^t (the task is known), afterwards the inferred task's E^t."""

    Options = HiDePromptOptions
    classifier_support = ClassifierSupport(kinds=("linear", "prototypes", "lda", "ridge"), reasons={
        "kind": "hide_prompt aligns its head itself, from its own statistics of the prompted features (options "
                "statistics, ca_epochs, ca_lr, ...): kind 'aligned' would align it a second time"})

    def __init__(self, backbone: Backbone, options: HiDePromptOptions, train: TrainConfig,
                 classifier: ClassifierConfig | None = None) -> None:
        super().__init__(backbone, options, train, classifier)
        dim = backbone.feature_dim
        self.prompts = TaskPrefixes(len(options.e_layers), options.e_length, dim)
        self.tii = TaskIdentity(dim, options.tii_hidden)
        stats = (options.statistics, options.covariance_eps, options.centroids)
        self.tii_stats = class_statistics(dim, *stats)  # frozen features
        self.tap_stats = class_statistics(dim, *stats)  # prompted features
        self.contrast_rows: tuple[int, torch.Tensor] | None = None  # (classes, the contrastive term's rows), cached
        self.seed = torch.initial_seed()  # the run's seed: end-of-task sampling is the same on every rank

    # -- tasks and prompts -----------------------------------------------------------------------
    def begin_task(self, task: TaskInfo) -> None:
        super().begin_task(task)
        with torch.no_grad():  # the release's head init (timm ViT: trunc normal 0.02, zero bias)
            nn.init.trunc_normal_(self.head.weights[-1], std=0.02)
        self.prompts.add_task(self._device(), copy_previous=self.options.init_from_previous)
        self.tii.grow(task.size)
        self.current_task = task.index

    def training_prompt(self, t: int) -> torch.Tensor:
        """P^t = (1 - m) E^t + m mean_{j<t} sg(E^j) (E^t itself for the first task or m = 0)."""
        m, e = self.options.prompt_momentum, self.prompts.e
        if t == 0 or m == 0:
            return e[t]
        return (1 - m) * e[t] + m * torch.stack([p.detach() for p in e[:t]]).mean(0)

    def prompted_features(self, inputs: Any, prompts: torch.Tensor) -> torch.Tensor:
        """Pooled feature with prefixes `prompts` [B or 1, layers, 2, L, D] at e_layers."""
        with self.injector.inject(layer_prefixes(self.options.e_layers, prompts)):
            return self.backbone(inputs)

    def infer_task(self, query: torch.Tensor) -> torch.Tensor:
        """t_hat: the task owning argmax_c h_tii(g(x)) over the seen classes (in float32, autocast off)."""
        with full_precision(query):
            classes = self.tii(query.float())[:, : self.head.num_classes].argmax(1)
        ends = torch.tensor(self.head.block_sizes(), device=classes.device).cumsum(0)
        return torch.bucketize(classes, ends, right=True)

    def features(self, inputs: Any) -> torch.Tensor:
        """With the task being trained known (`current_task`), P^t; else E^{t_hat(x)} per sample."""
        if self.current_task is not None:
            return self.prompted_features(inputs, self.training_prompt(self.current_task)[None])
        ids = self.infer_task(self.query(inputs))
        return self.prompted_features(inputs, self.prompts.stacked()[ids])

    def training_step(self, batch: tuple[Any, torch.Tensor], task: TaskInfo) -> StepOutput:
        inputs, labels = batch
        features = self.prompted_features(inputs, self.training_prompt(task.index)[None])
        logits = self.head(features)
        with full_precision(logits):
            ce = self.loss(logits.float(), labels, task)
            if self.options.contrast_weight == 0:
                return StepOutput(ce, {"ce": ce.detach()})
            reg = contrastive(features.float(), self.contrast_anchors(task.known), self.options.contrast_temperature)
        scalars = {"ce": ce.detach(), "contrast": reg.detach()}
        return StepOutput(ce + self.options.contrast_weight * reg, scalars)

    def contrast_anchors(self, known: int) -> torch.Tensor:
        """The rows the contrastive term pushes features from: the TAP statistics' class means (multi_centroid:
        every cluster mean) of classes [0, known); kept until the statistics change (`end_task`, a checkpoint
        load), as selecting the clusters reads their mask on the host."""
        if self.contrast_rows is None or self.contrast_rows[0] != known:
            self.contrast_rows = (known, self.tap_stats.anchors(known))
        return self.contrast_rows[1]

    # -- end of task: statistics, TII, alignment ---------------------------------------------------
    @torch.no_grad()
    def end_task(self, task: TaskInfo, train_loader: DataLoader) -> dict[str, Any]:
        """E^t <- P^t; class statistics of frozen and prompted features; train and align the TII head; align
        the head (from the second task on, as the release)."""
        t = task.index
        self.prompts.e[t].copy_(self.training_prompt(t))
        self.eval()
        device = self._device()
        prompt = self.prompts.e[t][None]
        both, labels = collect_features(lambda x: torch.cat([self.query(x), self.prompted_features(x, prompt)], 1),
                                        train_loader, device)
        frozen, prompted = both.split(self.backbone.feature_dim, dim=1)
        # k-means (multi_centroid) runs on the CPU: its own CPU generator, the same on every rank, which holds the
        # same gathered features (`collect_features`), so every rank fits the same clusters
        clustering = torch.Generator().manual_seed((self.seed + 7919 * (t + 1) + 1) % 2**63)
        self.tii_stats.fit(frozen, labels, task.known, task.total, clustering)
        self.tap_stats.fit(prompted, labels, task.known, task.total, clustering)
        self.contrast_rows = None
        generator = torch.Generator(device=device).manual_seed((self.seed + 7919 * (t + 1)) % 2**63)
        info: dict[str, Any] = {"tii_loss": self._fit_tii(frozen, labels, task, generator)}
        if t > 0:
            info |= self.align(task, generator)
        self.current_task = None  # from now on the prompt is chosen by the TII head
        info |= super().end_task(task, train_loader)
        return info

    @torch.enable_grad()
    def _fit_tii(self, features: torch.Tensor, labels: torch.Tensor, task: TaskInfo,
                 generator: torch.Generator) -> float:
        """The TII head's own training on the task's frozen features: Adam, CE over the task's classes."""
        params = [*(self.tii.mlp.parameters() if self.tii.mlp is not None else []), *self.tii.norm.parameters(),
                  self.tii.head.weights[-1], self.tii.head.biases[-1]]
        o, mean_loss = self.options, 0.0
        if o.tii_epochs == 0:
            return mean_loss
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(params, lr=o.tii_lr)
        self.tii.train()
        for _ in range(o.tii_epochs):
            order = torch.randperm(features.shape[0], generator=generator, device=features.device)
            total, steps = 0.0, 0
            for i in range(0, order.shape[0], o.tii_batch_size):
                rows = order[i:i + o.tii_batch_size]
                logits = self.tii(features[rows])[:, task.known:task.total]
                loss = F.cross_entropy(logits, labels[rows] - task.known)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
                optimizer.step()
                total, steps = total + float(loss.detach()), steps + 1
            mean_loss = total / max(steps, 1)
        self.tii.requires_grad_(False)
        self.tii.eval()
        return mean_loss

    def align(self, task: TaskInfo, generator: torch.Generator) -> dict[str, float]:
        """Classifier alignment of the TII head (on pseudo-features of the frozen features' statistics) and of the
        head (of the prompted features' statistics) over every seen class; uses the stored statistics only. Steps
        per epoch = classes of the earlier tasks."""
        o = self.options
        common = {"epochs": o.ca_epochs, "momentum": o.ca_momentum, "weight_decay": o.ca_weight_decay,
                  "generator": generator}
        self.tii.train()
        tii_loss = align_classifier(self.tii, list(self.tii.parameters()), self.tii_stats, task.total, task.known,
                                    batch_size=o.tii_ca_batch_size, lr=o.tii_ca_lr, **common)
        self.tii.eval()
        head_loss = align_classifier(self.head, list(self.head.parameters()), self.tap_stats, task.total,
                                     task.known, batch_size=o.ca_batch_size, lr=o.ca_lr, **common)
        return {"tii_alignment_loss": tii_loss, "head_alignment_loss": head_loss}

    # -- parameters and persistence ----------------------------------------------------------------
    def learning_only_tensors(self) -> list[torch.Tensor]:
        """The class statistics of frozen and prompted features: read by the alignments and the contrastive term
        (learning), never by prediction (TII head, prompts and head): counted by `stored_numbers` only."""
        return [*self.tii_stats.buffers(), *self.tap_stats.buffers()]

    def num_trainable(self) -> int:
        """The trainer's parameters plus the TII head's (trained inside `end_task`)."""
        return super().num_trainable() + sum(p.numel() for p in self.tii.parameters())

    def checkpoint_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        structure, tensors = super().checkpoint_state()
        structure["tii_blocks"] = self.tii.head.block_sizes()
        structure["statistics_classes"] = self.tii_stats.num_classes
        for name in ("tii", "tii_stats", "tap_stats"):
            tensors.update({f"{name}.{k}": v for k, v in getattr(self, name).state_dict().items()})
        return structure, tensors

    def load_checkpoint_state(self, structure: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        super().load_checkpoint_state(structure, tensors)
        self.tii.head.resize_to(structure["tii_blocks"])
        for stats in (self.tii_stats, self.tap_stats):
            stats.resize_to(structure["statistics_classes"])
        self.contrast_rows = None
        for name in ("tii", "tii_stats", "tap_stats"):
            module = getattr(self, name)
            module.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(f"{name}.")})
            module.to(self._device())
        self.tii.requires_grad_(False)
