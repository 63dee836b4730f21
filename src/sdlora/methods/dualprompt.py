"""DualPrompt (Wang et al., ECCV 2022): a shared G-prompt and task-specific E-prompts, by prefix-tuning.

    layers in g_layers:  Attn(q, [G_k; k], [G_v; v])           G shared by every task (trains throughout)
    layers in e_layers:  Attn(q, [E^t_k; k], [E^t_v; v])        E^t, key k_t: task t's own
    train task t:  E^t is used (the task is known);   loss = CE(head(f(x)), y) + lambda (1 - cos(q(x), k_t))
    test:          t(x) = argmax_t cos(q(x), k_t)  (task-key matching with the frozen [CLS] query q(x))
    f(x) = the backbone's pooled feature ([CLS] after the final norm for timm ViTs) with the prompts in.

Each prefix has L tokens for the keys and L for the values (shape [2, L, dim] per layer, as the
`(layers, 2, pool, length, heads, head_dim)` prefix of the PyTorch port, dualprompt-pytorch). Published
settings (DualPrompt paper section 5 / dualprompt-pytorch `configs/imr_dualprompt.py`): G at layers 0-1 with
L_g = 5, E at layers 2-4 with L_e = 20 (the paper's ImageNet-R setting; CIFAR-100 uses 5), one E-prompt per task,
pull weight lambda = 1.0 (`pull_constraint_coeff`), prompts and keys initialised uniform(-1, 1).
A finished task's E-prompt and key are frozen (requires_grad off, not in the optimiser): untouched afterwards.

Task start, as both releases: E^t starts as a copy of E^{t-1} (`init_from_previous`, default on: their
`shared_prompt_pool = True`, google-research/l2p configs/imr_dualprompt.py and cifar100_dualprompt.py,
train_continual.py `train_and_evaluate_per_task`; JH-LEE-KR/dualprompt-pytorch configs/*.py `--shared_prompt_pool`
default True, engine.py `train_and_evaluate`), and its key k_t starts uniform(-1, 1) (`key_from_previous`,
default off: their `shared_prompt_key = False`; on copies k_{t-1}). The first task's prompt and key are uniform.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sdlora.backbones.base import Backbone
from sdlora.config import ClassifierConfig, TrainConfig
from sdlora.data.scenario import TaskInfo
from sdlora.methods.base import StepOutput, full_precision
from sdlora.methods.options import DualPromptOptions
from sdlora.methods.prompting import TaskPromptMethod
from sdlora.prompts.pool import TaskPrefixes, cosine_match, layer_prefixes
from sdlora.registry import METHODS


def uniform(*shape: int, device: torch.device | None = None) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, device=device).uniform_(-1, 1))


class DualPrompts(TaskPrefixes):
    """G: [len(g_layers), 2, L_g, D]; E^t: [len(e_layers), 2, L_e, D] (`TaskPrefixes`) and key k_t: [D], one
    per task."""

    def __init__(self, g_layers: int, g_length: int, e_layers: int, e_length: int, dim: int) -> None:
        super().__init__(e_layers, e_length, dim)
        self.g = uniform(g_layers, 2, g_length, dim)
        self.keys = nn.ParameterList()

    def add_task(self, device: torch.device, copy_previous: bool = False, copy_key: bool = False) -> None:
        """A new E-prompt and key for the next task, each a copy of the last one (`copy_previous`, `copy_key`;
        from the second task on) or uniform(-1, 1); the earlier ones are frozen."""
        for p in self.keys:
            p.requires_grad_(False)
        super().add_task(device, copy_previous)
        copy_key = copy_key and len(self.keys) > 0
        self.keys.append(nn.Parameter(self.keys[-1].detach().clone()) if copy_key else uniform(self.dim, device=device))

    def resize(self, tasks: int, device: torch.device) -> None:
        self.keys = nn.ParameterList()
        super().resize(tasks, device)

    def train_only(self, task: int) -> None:
        super().train_only(task)
        for i, key in enumerate(self.keys):
            key.requires_grad_(i == task)

    def key_matrix(self) -> torch.Tensor:
        return torch.stack(list(self.keys))


@METHODS.register("dualprompt")
class DualPrompt(TaskPromptMethod):
    """DualPrompt: G-prompt (shared) + per-task E-prompts with keys, prefix-tuning, task-key matching."""

    prompts: DualPrompts

    Options = DualPromptOptions

    def __init__(self, backbone: Backbone, options: DualPromptOptions, train: TrainConfig,
                 classifier: ClassifierConfig | None = None) -> None:
        super().__init__(backbone, options, train, classifier)
        self.prompts = DualPrompts(len(options.g_layers), options.g_length, len(options.e_layers),
                                   options.e_length, backbone.feature_dim)

    def begin_task(self, task: TaskInfo) -> None:
        super().begin_task(task)
        o = self.options
        self.prompts.add_task(self._device(), copy_previous=o.init_from_previous, copy_key=o.key_from_previous)
        self.current_task = task.index

    def match(self, query: torch.Tensor) -> torch.Tensor:
        """t(x) = argmax_t cos(q(x), k_t): the E-prompt of each input at test time."""
        return cosine_match(query, self.prompts.key_matrix()).argmax(dim=1)

    def prompted_features(self, inputs: Any, task_ids: torch.Tensor) -> torch.Tensor:
        """The pooled feature with G at g_layers and E^{t(x)} at e_layers (per-sample prefixes)."""
        e = self.prompts.stacked()[task_ids]  # [B, layers, 2, L_e, D]
        prefixes = layer_prefixes(self.options.g_layers, self.prompts.g[None])
        prefixes.update(layer_prefixes(self.options.e_layers, e))
        with self.injector.inject(prefixes):
            return self.backbone(inputs)

    def features(self, inputs: Any) -> torch.Tensor:
        """With the task being trained known (`current_task`, until `end_task`) its E-prompt; else matching."""
        if self.current_task is not None:
            batch = next(iter(inputs.values())).shape[0] if isinstance(inputs, dict) else inputs.shape[0]
            ids = torch.full((batch,), self.current_task, dtype=torch.long, device=self._device())
        else:
            ids = self.match(self.query(inputs))
        return self.prompted_features(inputs, ids)

    def training_step(self, batch: tuple[Any, torch.Tensor], task: TaskInfo) -> StepOutput:
        inputs, labels = batch
        query = self.query(inputs)
        ids = torch.full((labels.shape[0],), task.index, dtype=torch.long, device=labels.device)
        logits = self.head(self.prompted_features(inputs, ids))
        with full_precision(logits):
            ce = self.loss(logits.float(), labels, task)
            key = self.prompts.keys[task.index].float()
            pull = (1 - cosine_match(query.float(), key[None])).mean()
        scalars = {"ce": ce.detach(), "pull": pull.detach()}
        return StepOutput(ce + self.options.pull_weight * pull, scalars)

    @torch.no_grad()
    def end_task(self, task: TaskInfo, train_loader: Any) -> dict[str, Any]:
        self.current_task = None  # from now on (prototypes, evaluation) the E-prompt is chosen by its key
        return super().end_task(task, train_loader)
