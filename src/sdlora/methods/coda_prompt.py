"""CODA-Prompt (Smith et al., CVPR 2023): prompts assembled from a pool of components by input-conditioned,
attention-weighted cosine matching; each task adds its own slice of components, initialised orthogonal to
the earlier ones.

Per prompted layer, components m = 1..M with key K_m, attention vector A_m and prompt P_m [L, D]:
    alpha_m(x) = cos(q(x) * A_m, K_m)        (q(x): the frozen [CLS]; * is element-wise)
    p(x) = sum_m alpha_m(x) P_m,   P_k = p(x)[:L/2], P_v = p(x)[L/2:]   (prefix-tuning, as the release)
    loss = CE + mu * sum_layers [ ||K K^T - I||^2 + ||A A^T - I||^2 + ||P P^T - I||^2 ]   (means of squares)
Task t owns components [t M / T, (t + 1) M / T): while it trains the older ones are used but frozen (the
release's `K[:s].detach()`), the later ones unused. Its new K, A and (flattened) P start as orthonormal vectors
orthogonal to the span of all older components (Gram-Schmidt against the old span, computed with QR; the
release orthogonalises against each old vector in turn, which is exact only while the old ones stay
orthogonal).

Published settings (GT-RIPL/CODA-Prompt `configs/imnet-r_prompt.yaml`, run with `--prompt_param 100 8 0.0`):
M = 100 components, L = 8, prompts at layers 0-4, mu = 0.0 in the released code (the paper states 0.1,
CODA-Prompt issue #12); components initialised orthogonally.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from sdlora.backbones.base import Backbone
from sdlora.config import ClassifierConfig, TrainConfig
from sdlora.data.scenario import TaskInfo
from sdlora.methods.base import StepOutput, full_precision
from sdlora.methods.options import CodaPromptOptions
from sdlora.methods.prompting import PromptMethod
from sdlora.registry import METHODS


def orthogonal_to(old: torch.Tensor, count: int) -> torch.Tensor:
    """`count` orthonormal rows orthogonal to every row of `old` [n, d] (Gram-Schmidt of random vectors
    against the old span, by QR)."""
    n, dim = old.shape
    if n + count > dim:
        raise ValueError(f"coda_prompt: {n + count} components cannot be orthogonal in {dim} dimensions")
    new = torch.randn(dim, count, dtype=torch.float64, device=old.device)
    if n:
        basis = torch.linalg.qr(old.detach().double().T).Q  # [d, n], orthonormal basis of the old span
        new = new - basis @ (basis.T @ new)
        new = new - basis @ (basis.T @ new)  # twice is enough (Kahan-Parlett re-orthogonalisation)
    return torch.linalg.qr(new).Q.T.to(old.dtype)


def ortho_penalty(t: torch.Tensor) -> torch.Tensor:
    """mean((T T^T - I)^2) over the rows of T (the release's `ortho_penalty`)."""
    gram = t @ t.T
    return (gram - torch.eye(t.shape[0], device=t.device, dtype=t.dtype)).pow(2).mean()


class Components(nn.Module):
    """Per task t, blocks K_t, A_t: [layers, n, D] and P_t: [layers, n, L, D]; the older blocks are frozen."""

    def __init__(self, layers: int, length: int, dim: int) -> None:
        super().__init__()
        self.layers, self.length, self.dim = layers, length, dim
        self.keys = nn.ParameterList()
        self.attention = nn.ParameterList()
        self.prompts = nn.ParameterList()

    def all(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """K, A: [layers, M_t, D]; P: [layers, M_t, L, D] over every task so far."""
        return (torch.cat(list(self.keys), 1), torch.cat(list(self.attention), 1), torch.cat(list(self.prompts), 1))

    def add_task(self, count: int, device: torch.device) -> None:
        """Freeze the older blocks; add `count` components per layer, orthonormal and orthogonal to the old."""
        for p in self.parameters():
            p.requires_grad_(False)
        old = self.all() if len(self.keys) else None
        blocks: list[torch.Tensor] = []
        for which, width in ((0, self.dim), (1, self.dim), (2, self.length * self.dim)):
            rows = []
            for layer in range(self.layers):
                before = (old[which][layer].reshape(-1, width) if old is not None
                          else torch.zeros(0, width, device=device))
                rows.append(orthogonal_to(before, count))
            blocks.append(torch.stack(rows))
        self.keys.append(nn.Parameter(blocks[0]))
        self.attention.append(nn.Parameter(blocks[1]))
        self.prompts.append(nn.Parameter(blocks[2].reshape(self.layers, count, self.length, self.dim)))


@METHODS.register("coda_prompt")
class CodaPrompt(PromptMethod):
    """CODA-Prompt: attention-weighted component pool, per-task component slices, orthogonal initialisation."""

    prompts: Components
    #: the task start adds components, and every input's prompt assembles them
    task_start_keeps_features = False

    Options = CodaPromptOptions

    def __init__(self, backbone: Backbone, options: CodaPromptOptions, train: TrainConfig,
                 classifier: ClassifierConfig | None = None) -> None:
        super().__init__(backbone, options, train, classifier)
        self.prompts = Components(len(options.layers), options.prompt_length, backbone.feature_dim)

    def begin_task(self, task: TaskInfo) -> None:
        super().begin_task(task)
        per_task = self.options.pool_size // task.num_tasks
        if per_task < 1:
            raise ValueError(f"coda_prompt: pool_size {self.options.pool_size} < {task.num_tasks} tasks")
        self.prompts.add_task(per_task, self._device())

    def weights(self, query: torch.Tensor, keys: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """alpha[l, b, m] = cos(q_b * A_lm, K_lm)."""
        attended = F.normalize(query[None, :, None, :] * attention[:, None], dim=-1)  # [l, B, M, D]
        return (attended * F.normalize(keys, dim=-1)[:, None]).sum(-1)

    def prompted_features(self, inputs: Any) -> torch.Tensor:
        """The pooled feature with p(x) = sum_m alpha_m(x) P_m as prefix at each prompted layer."""
        keys, attention, prompts = self.prompts.all()
        alpha = self.weights(self.query(inputs), keys, attention)  # [l, B, M]
        assembled = torch.einsum("lbm,lmkd->lbkd", alpha, prompts)  # [l, B, L, D]
        half = self.options.prompt_length // 2
        prefixes = {layer: (assembled[i, :, :half], assembled[i, :, half:])
                    for i, layer in enumerate(self.options.layers)}
        with self.injector.inject(prefixes):
            return self.backbone(inputs)

    def features(self, inputs: Any) -> torch.Tensor:
        return self.prompted_features(inputs)

    def orthogonality(self) -> torch.Tensor:
        """sum over layers of the penalties of K, A and flattened P (all components so far)."""
        keys, attention, prompts = self.prompts.all()
        # a tensor: the options keep at least one prompted layer
        return cast(torch.Tensor, sum(ortho_penalty(k) + ortho_penalty(a) + ortho_penalty(p.flatten(1))
                                      for k, a, p in zip(keys, attention, prompts, strict=True)))

    def training_step(self, batch: tuple[Any, torch.Tensor], task: TaskInfo) -> StepOutput:
        inputs, labels = batch
        logits = self.head(self.prompted_features(inputs))
        with full_precision(logits):
            ce = self.loss(logits.float(), labels, task)
            if self.options.ortho_weight == 0:
                return StepOutput(ce, {"ce": ce.detach()})
            ortho = self.orthogonality()
        scalars = {"ce": ce.detach(), "ortho": ortho.detach()}
        return StepOutput(ce + self.options.ortho_weight * ortho, scalars)

    def prompt_structure(self) -> dict[str, Any]:
        return {"blocks": [int(k.shape[1]) for k in self.prompts.keys]}

    def resize_prompts(self, structure: dict[str, Any]) -> None:
        p = self.prompts
        self.prompts = Components(p.layers, p.length, p.dim)
        for count in structure["blocks"]:
            self.prompts.add_task(count, self._device())

    def restore_trainable_flags(self, task: TaskInfo) -> None:
        super().restore_trainable_flags(task)
        last = len(self.prompts.keys) - 1
        for group in (self.prompts.keys, self.prompts.attention, self.prompts.prompts):
            for i, p in enumerate(group):
                p.requires_grad_(i == last)
