"""SimpleCIL (Zhou et al., 2023): frozen backbone, class prototypes, cosine nearest-class-mean. No training."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sdlora.backbones.base import Backbone
from sdlora.config import TrainConfig
from sdlora.data.scenario import TaskInfo
from sdlora.methods.base import Method
from sdlora.registry import METHODS


@METHODS.register("ncm")
class NCM(Method):
    """Frozen backbone + cosine nearest-class-mean over class prototypes (SimpleCIL); no training."""

    trains = False

    @dataclass
    class Options:
        pass

    def __init__(self, backbone: Backbone, options: Options, train: TrainConfig) -> None:
        prototypes = dataclasses.replace(train.classifier, kind="prototypes", drift="none")
        super().__init__(backbone, options, dataclasses.replace(train, classifier=prototypes))

    def begin_task(self, task: TaskInfo) -> None:
        """No head to grow: the prototypes are the classifier."""

    def trainable_parameters(self) -> list[dict[str, Any]]:
        return []
