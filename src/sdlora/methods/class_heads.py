"""Classifiers fitted from class statistics (`method.classifier.kind`), one interface for every method.

After each task the method fits the new classes' statistics from the task's features (the no-gradient pass it
already makes), moves those of old classes by drift compensation when the features moved, and predicts with
the head's `logits` at evaluation; the linear head still carries the training loss. Kinds:

    prototypes   cosine nearest-class-mean (`prototypes.ClassPrototypes`)
    lda          linear discriminant analysis with a shared covariance (`lda.LDAHead`)
    ridge        ridge regression onto one-hot targets, RanPAC's head (`lda.RidgeHead`)
    aligned      the linear head, retrained after each task on pseudo-features of every seen class drawn from
                 stored class statistics: SLCA's classifier alignment (`aligned.AlignedHead`)
    linear       none: the trained linear head predicts

`lda` and `ridge` take `random_features: M`: a fixed random feature map of the normalised feature before the head
(`random_features.RandomFeatures`), drawn from the run's seed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from sdlora.method_config import ClassifierConfig
from sdlora.methods.aligned import AlignedHead
from sdlora.methods.head import IncrementalHead
from sdlora.methods.lda import LDAHead, RidgeHead
from sdlora.methods.prototypes import ClassPrototypes
from sdlora.methods.random_features import RandomFeatures


class ClassHead(Protocol):
    """What a method needs from a classifier fitted from class statistics."""

    @property
    def export_kind(self) -> str:
        """How `sdlora export` applies (W, b): a key of `sdlora.export.common.CLASSIFIER_KINDS`."""

    @property
    def feature_map(self) -> RandomFeatures | None:
        """A fixed random feature map inside `lift`: the logits are then not linear in the feature, and no export
        format (one linear head over the feature) can write them; None: (W, b) apply to the normalised feature."""

    @property
    def num_classes(self) -> int: ...

    def fit(self, features: torch.Tensor, labels: torch.Tensor, low: int, high: int) -> dict[str, Any]:
        """Statistics of classes [low, high) from their features (labels in [low, high)); returns what the task's
        results.json `task_info` records of the fit (e.g. LDA's shrinkage)."""

    def compensate_drift(self, before: torch.Tensor, after: torch.Tensor, upto: int, sigma: float) -> float:
        """SDC on classes [0, upto) from the same samples' features before and after; returns the mean shift."""

    def compensate_affine(self, before: torch.Tensor, after: torch.Tensor, upto: int, ridge: float) -> float:
        """The affine drift (`methods.drift`) on classes [0, upto), from the same samples; returns the mean shift."""

    def lift(self, features: torch.Tensor) -> torch.Tensor:
        """What (W, b) of `export_head` apply to: logits = lift(f) W^T + b."""

    def logits(self, features: torch.Tensor) -> torch.Tensor: ...

    def export_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W [C, D], b [C]) applied as `export_kind` says."""

    def stored_numel(self) -> int:
        """Numbers stored to predict."""

    def checkpoint_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]: ...

    def load_checkpoint_state(self, structure: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None: ...

    def to(self, *args: Any, **kwargs: Any) -> Any: ...


def feature_map(dim: int, cfg: ClassifierConfig) -> RandomFeatures | None:
    """The fixed random feature map of `random_features` (None without), drawn from the run's seed (the engine
    seeds torch before it builds the method, so torch.initial_seed() is the run's seed)."""
    if cfg.random_features is None:
        return None
    assert cfg.feature_map is not None  # `ClassifierSupport.resolve` fills it (and bandwidth for rff)
    bandwidth = 1.0 if cfg.bandwidth is None else cfg.bandwidth  # relu: scale-free, 1 is as good as any
    return RandomFeatures(dim, cfg.random_features, cfg.feature_map, bandwidth, torch.initial_seed())


def lda_head(dim: int, cfg: ClassifierConfig) -> LDAHead:
    assert cfg.shrinkage is not None and cfg.priors is not None  # `ClassifierSupport.resolve` fills them for lda
    return LDAHead(dim, cfg.shrinkage, cfg.priors, feature_map(dim, cfg))


def ridge_head(dim: int, cfg: ClassifierConfig) -> RidgeHead:
    # `ClassifierSupport.resolve` fills it for ridge and refuses 'oas' there
    assert cfg.shrinkage is not None and cfg.shrinkage != "oas"
    return RidgeHead(dim, cfg.shrinkage, feature_map(dim, cfg))


#: kind -> builder(feature dim, resolved classifier settings, the method's linear head); a kind not here
#: (`linear`) has no such head
CLASS_HEADS: dict[str, Callable[[int, ClassifierConfig, IncrementalHead], ClassHead]] = {
    "prototypes": lambda dim, cfg, head: ClassPrototypes(dim),
    "lda": lambda dim, cfg, head: lda_head(dim, cfg),
    "ridge": lambda dim, cfg, head: ridge_head(dim, cfg),
    "aligned": AlignedHead,
}


def build_class_head(dim: int, cfg: ClassifierConfig, head: IncrementalHead) -> ClassHead | None:
    """The head of `cfg.kind` (settings resolved), or None for the linear head (`head`, which `aligned` aligns)."""
    builder = CLASS_HEADS.get(cfg.kind or "linear")
    return None if builder is None else builder(dim, cfg, head)
