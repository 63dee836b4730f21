"""Classifiers fitted from class statistics (`method.classifier.kind`), one interface for every method.

After each task the method fits the new classes' statistics from the task's features (the no-gradient pass it
already makes), moves those of old classes by drift compensation when the features moved, and predicts with
the head's `logits` at evaluation; the linear head still carries the training loss. Kinds:

    prototypes   cosine nearest-class-mean (`prototypes.ClassPrototypes`)
    lda          linear discriminant analysis with a shared covariance (`lda.LDAHead`)
    linear       none: the trained linear head predicts
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from sdlora.method_config import ClassifierConfig
from sdlora.methods.lda import LDAHead
from sdlora.methods.prototypes import ClassPrototypes


class ClassHead(Protocol):
    """What a method needs from a classifier fitted from class statistics."""

    #: how `sdlora export` applies (W, b): a key of `sdlora.export.common.CLASSIFIER_KINDS`
    export_kind: str

    @property
    def num_classes(self) -> int: ...

    def fit(self, features: torch.Tensor, labels: torch.Tensor, low: int, high: int) -> dict[str, Any]:
        """Statistics of classes [low, high) from their features (labels in [low, high)); returns what the task's
        results.json `task_info` records of the fit (e.g. LDA's shrinkage)."""

    def compensate_drift(self, before: torch.Tensor, after: torch.Tensor, upto: int, sigma: float) -> float:
        """SDC on classes [0, upto) from the same samples' features before and after; returns the mean shift."""

    def logits(self, features: torch.Tensor) -> torch.Tensor: ...

    def export_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W [C, D], b [C]) applied as `export_kind` says."""

    def stored_numel(self) -> int:
        """Numbers stored to predict."""

    def checkpoint_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]: ...

    def load_checkpoint_state(self, structure: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None: ...

    def to(self, *args: Any, **kwargs: Any) -> Any: ...


def lda_head(dim: int, cfg: ClassifierConfig) -> LDAHead:
    assert cfg.shrinkage is not None and cfg.priors is not None  # `ClassifierSupport.resolve` fills them for lda
    return LDAHead(dim, cfg.shrinkage, cfg.priors)


#: kind -> builder(feature dim, resolved classifier settings); a kind not here (`linear`) has no such head
CLASS_HEADS: dict[str, Callable[[int, ClassifierConfig], ClassHead]] = {
    "prototypes": lambda dim, cfg: ClassPrototypes(dim),
    "lda": lda_head,
}


def build_class_head(dim: int, cfg: ClassifierConfig) -> ClassHead | None:
    """The head of `cfg.kind` (settings resolved), or None for the linear head."""
    builder = CLASS_HEADS.get(cfg.kind or "linear")
    return None if builder is None else builder(dim, cfg)
