"""Classifier alignment as a classifier kind (`method.classifier.kind: aligned`): SLCA's CA (Zhang et al., ICCV 2023),
the head half of HiDe-Prompt's task-adaptive prediction, for any method with a linear head.

The linear head trains as usual (cross-entropy, `method.classifier.loss`). After each task the new classes'
feature statistics are stored (`class_stats`: a Gaussian per class, `statistics: covariance` or its diagonal
`variance`, or HiDe-Prompt's `multi_centroid`), and from the second task on the whole head is retrained on
pseudo-features of every seen class, with no data of earlier tasks:

    h ~ N(mu_c, Sigma_c)   `alignment_samples` per class (per cluster) and epoch, c in [0, seen)
    min_{W, b}  CE(h W^T + b, c)   SGD (momentum 0.9, weight decay 5e-4), cosine over `alignment_epochs`,
                                   `seen` batches of `alignment_samples` per epoch, lr `alignment_lr`

(`class_stats.align_classifier`; SLCA's defaults: 5 epochs, lr 0.01, 256 per class). The aligned linear head
predicts, on the raw feature, so it exports as any linear head. `drift: sdc` moves the stored means of old classes
by SDC's estimate from the current task's samples before the new ones are fitted (the spread is kept), so the
pseudo-features follow adapted features; SLCA itself has no such step (its backbone learns slowly).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sdlora.method_config import ClassifierConfig
from sdlora.methods.class_stats import ClassStatistics, align_classifier, class_statistics
from sdlora.methods.head import IncrementalHead
from sdlora.methods.prototypes import sdc_shift

MOMENTUM = 0.9  # SLCA's stage-2 SGD
WEIGHT_DECAY = 5e-4


class AlignedHead(nn.Module):
    """Class statistics of the features and the alignment of the method's linear head (`head`, owned and
    checkpointed by `classifier.Classifier`; held here without registering it, so it is one module's tensors)."""

    feature_map = None  # (W, b) apply to the feature itself
    export_kind = "linear"

    def __init__(self, dim: int, cfg: ClassifierConfig, head: IncrementalHead) -> None:
        super().__init__()
        assert cfg.statistics is not None and cfg.alignment_epochs is not None  # resolved (`HEAD_DEFAULTS`)
        assert cfg.alignment_lr is not None and cfg.alignment_samples is not None
        self.stats: ClassStatistics = class_statistics(dim, cfg.statistics)
        self.epochs, self.lr, self.samples = cfg.alignment_epochs, cfg.alignment_lr, cfg.alignment_samples
        self._head = (head,)  # a tuple: not a submodule
        # the engine seeds torch before it builds the method: the run's seed, the same on every rank and on resume
        self.seed = torch.initial_seed()

    @property
    def head(self) -> IncrementalHead:
        return self._head[0]

    @property
    def num_classes(self) -> int:
        return self.stats.num_classes

    def _generator(self, low: int, device: torch.device) -> torch.Generator:
        """Per task (its first class `low`): the same draws on every rank and after a resume."""
        return torch.Generator(device=device).manual_seed((self.seed + 7919 * (low + 1)) % 2**63)

    @torch.no_grad()
    def fit(self, features: torch.Tensor, labels: torch.Tensor, low: int, high: int) -> dict[str, Any]:
        """Statistics of classes [low, high); from the second task on, the head aligned over [0, high)."""
        self.stats.fit(features.float(), labels, low, high, torch.Generator().manual_seed(self.seed + low))
        if low == 0:
            return {}
        return {"alignment_loss": self.align(high, self._generator(low, features.device))}

    def align(self, seen: int, generator: torch.Generator) -> float:
        """Retrain every row of the head on pseudo-features of classes [0, seen) (old rows' flags kept)."""
        return align_classifier(self.head, list(self.head.parameters()), self.stats, seen, seen,
                                epochs=self.epochs, batch_size=self.samples, lr=self.lr, momentum=MOMENTUM,
                                weight_decay=WEIGHT_DECAY, generator=generator)

    @torch.no_grad()
    def compensate_drift(self, before: torch.Tensor, after: torch.Tensor, upto: int, sigma: float) -> float:
        """SDC on the means of classes [0, upto); returns their mean shift (feature units)."""
        if upto == 0:
            return 0.0
        shift = sdc_shift(self.stats.class_means(upto), before, after, sigma)
        self.stats.shift_means(shift)
        return float(shift.norm(dim=-1).mean())

    def compensate_affine(self, before: torch.Tensor, after: torch.Tensor, upto: int, ridge: float) -> float:
        """Refused (`method_config.ClassifierSupport` says so first): the per-class statistics take SDC."""
        raise ValueError("classifier alignment's statistics take drift 'sdc', not 'affine'")

    @staticmethod
    def lift(features: torch.Tensor) -> torch.Tensor:
        return features.float()

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features.float())

    def export_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head.weight().detach().clone(), self.head.bias().detach().clone()

    def stored_numel(self) -> int:
        """Numbers stored to predict: the head's W and b (the statistics are only needed to learn more classes)."""
        return self.head.num_classes * (self.head.in_features + 1)

    def checkpoint_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {"aligned_classes": self.num_classes}, {f"aligned.{k}": v for k, v in self.stats.state_dict().items()}

    def load_checkpoint_state(self, structure: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.stats.resize_to(structure["aligned_classes"])
        self.stats.load_state_dict({k[len("aligned."):]: v for k, v in tensors.items() if k.startswith("aligned.")})
