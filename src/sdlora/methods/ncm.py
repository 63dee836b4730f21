"""SimpleCIL (Zhou et al., 2023): frozen backbone, class prototypes, cosine nearest-class-mean. No training.

With `method.classifier.kind: lda` (or `ridge`) the same frozen features feed the LDA (ridge) head from class
statistics instead (`sdlora.methods.lda`): still no training, one shared covariance besides the class means."""

from __future__ import annotations

from typing import Any

from sdlora.data.scenario import TaskInfo
from sdlora.method_config import ClassifierSupport
from sdlora.methods.base import Method
from sdlora.methods.options import NoOptions
from sdlora.registry import METHODS


@METHODS.register("ncm")
class NCM(Method):
    """Frozen backbone + cosine nearest-class-mean over class prototypes (SimpleCIL); no training."""

    trains = False
    classifier_support = ClassifierSupport(
        kinds=("prototypes", "lda", "ridge"), drifts=("none",), head_inits=(), reasons={
            "kind": "ncm has no trained head: it predicts from class statistics (kind 'prototypes', 'lda' or 'ridge')",
            "drift": "ncm's backbone is frozen, so the features never drift (SDC would move every mean by 0)",
            "head_init": "ncm has no head to initialise",
            "training": "ncm trains nothing (no loss, no head rows to freeze, no head learning rate)"})

    Options = NoOptions

    def begin_task(self, task: TaskInfo) -> None:
        """No head to grow: the class statistics are the classifier."""

    def trainable_parameters(self) -> list[dict[str, Any]]:
        return []
