"""L2P, Learning to Prompt (Wang et al., CVPR 2022): a pool of prompt tokens, chosen per input by key matching.

    q(x) = frozen backbone [CLS];  s(x) = the N prompts whose keys k_i are nearest to q(x) (cosine)
    f(x) = mean of the outputs at the N * L_p prompt positions of the backbone run on [CLS, P_s(x), patches]
           (`readout: prompt`, the release's `head_type: prompt`), or the backbone's own readout of the
           input's tokens in that same run (`readout: backbone`: [CLS] on a ViT = the release's
           `head_type: token`; the masked token mean of a mean-pooled sentence encoder)
    loss = CE(head(f(x)), y) + lambda * sum_{i in s(x)} (1 - cos(q(x), k_i))      (the key pull, Eq. 5)

Prompt-frequency balancing (the paper's "diversified prompt selection", `balance: true`) scales each
distance by the prompt's share of the past tasks' selections while training. Selection is per sample (the
PyTorch port's `batchwise_prompt`, which makes predictions depend on the test batch, is not reproduced).
The prompt readout suits a ViT pre-trained to read [CLS]; a mean-pooled sentence encoder was never
trained to put the sentence into extra positions, so text configs read out the backbone's way.
Defaults are the published ImageNet-R / CIFAR-100 settings: M = 10, L_p = 5, N = 5 (L2P paper section 5 and
l2p-pytorch `configs/`); lambda = 0.1 (`pull_constraint_coeff` of l2p-pytorch's configs).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from sdlora.backbones.base import Backbone
from sdlora.config import ClassifierConfig, TrainConfig
from sdlora.data.scenario import TaskInfo
from sdlora.methods.base import StepOutput, full_precision
from sdlora.methods.options import L2POptions
from sdlora.methods.prompting import PromptMethod
from sdlora.prompts.pool import KeyedPool, pull_loss
from sdlora.registry import METHODS


@METHODS.register("l2p")
class L2P(PromptMethod):
    """L2P: keyed prompt pool, top-N cosine selection, key pull loss; classifier on the mean prompt output."""

    prompts: KeyedPool

    Options = L2POptions

    def __init__(self, backbone: Backbone, options: L2POptions, train: TrainConfig,
                 classifier: ClassifierConfig | None = None) -> None:
        super().__init__(backbone, options, train, classifier)
        dim = backbone.feature_dim
        self.prompts = KeyedPool(options.pool_size, (options.prompt_length, dim), dim)

    def select(self, inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(q(x), s(x)): the frozen query and the indices [B, N] of the chosen prompts."""
        query = self.query(inputs)
        return query, self.prompts.select(query, self.options.top_n, self.options.balance)

    def prompted_features(self, inputs: Any, idx: torch.Tensor) -> torch.Tensor:
        """f(x) of the backbone run with prompts P_idx inserted after [CLS] (`readout`)."""
        tokens = self.prompts.prompts[idx].flatten(1, 2)  # [B, N * L_p, D]
        with self.injector.inject(tokens=tokens):
            hidden = self.injector.hidden(inputs)
        if self.options.readout == "prompt":
            return self.injector.prompt_outputs(hidden, tokens.shape[1]).mean(dim=1)
        return self.backbone.readout(self.injector.input_outputs(hidden, tokens.shape[1]), inputs)

    def features(self, inputs: Any) -> torch.Tensor:
        return self.prompted_features(inputs, self.select(inputs)[1])

    def training_step(self, batch: tuple[Any, torch.Tensor], task: TaskInfo) -> StepOutput:
        inputs, labels = batch
        query, idx = self.select(inputs)
        logits = self.head(self.prompted_features(inputs, idx))
        with full_precision(logits):
            ce = self.loss(logits.float(), labels, task)
            pull = pull_loss(query.float(), self.prompts.keys.float(), idx)
        scalars = {"ce": ce.detach(), "pull": pull.detach()}
        return StepOutput(ce + self.options.pull_weight * pull, scalars)

    def learning_only_tensors(self) -> list[torch.Tensor]:
        """The selection counts: read by frequency balancing while training only, never by prediction."""
        return [self.prompts.counts, self.prompts.current_counts]

    @torch.no_grad()
    def end_task(self, task: TaskInfo, train_loader: DataLoader) -> dict[str, Any]:
        self.prompts.end_task()
        info = super().end_task(task, train_loader)
        info["prompt_counts"] = [int(c) for c in self.prompts.counts.tolist()]
        return info
