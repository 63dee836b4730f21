"""The run record behind results.json (its fields: README "What a run writes"): accuracy matrix, curve, metrics,
costs."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from typing import Any

from sdlora.config import RunConfig, config_to_dict
from sdlora.data.scenario import Scenario
from sdlora.engine.metrics import METRIC_NAMES, accuracy_curve, compute_metrics, null_reasons


def package_versions() -> dict[str, str | None]:
    """The code that ran: sdlora (and its git commit when it runs from a checkout, else None) and the libraries."""
    import numpy
    import timm
    import torch
    import transformers

    from sdlora.provenance import git_commit, package_version

    return {
        "sdlora": package_version(),
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
    #: row i: accuracies after task i; None when `eval_every` skipped that evaluation
    accuracy_matrix: list[list[float] | None] = field(default_factory=list)
    task_test_counts: list[int] = field(default_factory=list)
    trainable_parameters: list[int] = field(default_factory=list)
    task_times_s: list[float] = field(default_factory=list)
    task_info: list[dict[str, Any]] = field(default_factory=list)
    wall_time_s: float = 0.0
    #: training processes (torchrun) of the session that wrote the record: the global batch is split over them
    processes: int = 1
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

    def add_task(self, row: list[float] | None, counts: list[int], trainable: int, seconds: float,
                 info: dict[str, Any]) -> None:
        """`row` None: not evaluated after this task (`eval_every`); the counts stay the last evaluation's."""
        self.accuracy_matrix.append(None if row is None else [float(a) for a in row])
        if row is not None:
            self.task_test_counts = list(counts)
        self.trainable_parameters.append(int(trainable))
        self.task_times_s.append(float(seconds))
        self.task_info.append(info)

    def add_time(self, seconds: float) -> None:
        self.wall_time_s += seconds

    def complete(self) -> None:
        self.status = "complete"

    @property
    def accuracy_curve(self) -> list[float | None]:
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
        out["evaluation"] = self.evaluation()
        return out

    def evaluation(self) -> dict[str, Any]:
        """The evaluation schedule and what it leaves exact: `every` (config `eval_every`), the tasks after which
        the run evaluated (1-based), the metrics computed from the rows there (`exact`) and, for each metric
        that is null because rows are missing, the reason (`null`)."""
        missing = null_reasons(self.accuracy_matrix) if self.accuracy_matrix else {}
        return {
            "every": self.config.get("eval_every", 1),
            "tasks": [i + 1 for i, row in enumerate(self.accuracy_matrix) if row is not None],
            "exact": [name for name in METRIC_NAMES if name not in missing] if self.accuracy_matrix else [],
            "null": missing,
        }
