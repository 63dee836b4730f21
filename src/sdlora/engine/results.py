"""The run record behind results.json (the contract in design.md): accuracy matrix, curve, metrics, costs."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from typing import Any

from sdlora.config import RunConfig, config_to_dict
from sdlora.data.scenario import Scenario
from sdlora.engine.metrics import accuracy_curve, compute_metrics


def package_versions() -> dict[str, str | None]:
    """The code that ran: sdlora (and its git commit when it runs from a checkout, else None) and the libraries."""
    import numpy
    import timm
    import torch
    import transformers

    import sdlora
    from sdlora.provenance import git_commit

    return {
        "sdlora": sdlora.__version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
    }


@dataclass
class RunRecord:
    method: str
    benchmark: str
    backbone: dict[str, Any]
    seed: int
    class_order: list[int]
    class_names: list[str]
    task_sizes: list[int]
    data: dict[str, Any]
    config: dict[str, Any]
    versions: dict[str, str | None]
    accuracy_matrix: list[list[float]] = field(default_factory=list)
    task_test_counts: list[int] = field(default_factory=list)
    trainable_parameters: list[int] = field(default_factory=list)
    task_times_s: list[float] = field(default_factory=list)
    task_info: list[dict[str, Any]] = field(default_factory=list)
    wall_time_s: float = 0.0
    #: `sdlora.engine.cost.inference_cost` of the finished run (None until the last task, or if it failed)
    inference_cost: dict[str, Any] | None = None
    status: str = "running"

    @classmethod
    def start(cls, cfg: RunConfig, seed: int, scenario: Scenario, backbone: dict[str, Any],
              data: dict[str, Any]) -> RunRecord:
        return cls(
            method=cfg.method.name, benchmark=cfg.benchmark.name, backbone=backbone, seed=seed,
            class_order=[int(c) for c in scenario.class_order], class_names=scenario.class_names(),
            task_sizes=list(scenario.task_sizes), data=data, config=config_to_dict(cfg),
            versions=package_versions(),
        )

    def add_task(self, row: list[float], counts: list[int], trainable: int, seconds: float,
                 info: dict[str, Any]) -> None:
        self.accuracy_matrix.append([float(a) for a in row])
        self.task_test_counts = list(counts)
        self.trainable_parameters.append(int(trainable))
        self.task_times_s.append(float(seconds))
        self.task_info.append(info)

    def add_time(self, seconds: float) -> None:
        self.wall_time_s += seconds

    def complete(self) -> None:
        self.status = "complete"

    @property
    def accuracy_curve(self) -> list[float]:
        return accuracy_curve(self.accuracy_matrix, self.task_test_counts)

    _PROGRESS = ("accuracy_matrix", "task_test_counts", "trainable_parameters", "task_times_s", "task_info",
                 "wall_time_s")

    def progress(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._PROGRESS}

    def restore(self, progress: dict[str, Any]) -> None:
        for k in self._PROGRESS:
            setattr(self, k, progress[k])

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["num_tasks"] = len(self.task_sizes)
        out["tasks_done"] = len(self.accuracy_matrix)
        out["accuracy_curve"] = self.accuracy_curve
        out["metrics"] = compute_metrics(self.accuracy_matrix, self.task_test_counts) if self.accuracy_matrix else {}
        out["published"] = self.config.get("published")
        return out
