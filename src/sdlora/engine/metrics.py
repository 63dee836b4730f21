"""Class-incremental metrics from the accuracy matrix (all values in percent).

a[i][j] is the accuracy on task j's test classes after training task i (j <= i), predicting by argmax over
every seen class; the matrix is stored lower-triangular (row i has i + 1 entries). n_j = test samples of
task j.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

METRIC_NAMES = (
    "final_accuracy",
    "final_accuracy_task_mean",
    "average_incremental_accuracy",
    "forgetting",
    "backward_transfer",
)


def _check(matrix: Sequence[Sequence[float]], counts: Sequence[int]) -> None:
    if not matrix:
        raise ValueError("accuracy matrix is empty")
    for i, row in enumerate(matrix):
        if len(row) != i + 1:
            raise ValueError(f"accuracy matrix row {i} has {len(row)} entries, expected {i + 1}")
    if len(counts) < len(matrix):
        raise ValueError(f"{len(counts)} task test counts for {len(matrix)} tasks")
    if any(c <= 0 for c in counts[: len(matrix)]):
        raise ValueError(f"task test counts must be positive, got {list(counts)}")


def accuracy_curve(matrix: list[list[float]], counts: list[int]) -> list[float]:
    """curve[i] = sum_{j<=i} a[i][j] n_j / sum_{j<=i} n_j: accuracy over all seen test samples after task i
    (sample-weighted)."""
    _check(matrix, counts)
    return [sum(a * n for a, n in zip(row, counts)) / sum(counts[: len(row)]) for row in matrix]


def compute_metrics(matrix: list[list[float]], counts: list[int]) -> dict[str, float | None]:
    """The metrics of METRIC_NAMES; forgetting and backward transfer are None with a single task.

    forgetting = mean_{j<T-1} (max_{j<=i<=T-2} a[i][j] - a[T-1][j])   (best earlier accuracy - final)
    backward_transfer = mean_{j<T-1} (a[T-1][j] - a[j][j])
    """
    curve = accuracy_curve(matrix, counts)
    last = matrix[-1]
    old = range(len(matrix) - 1)
    forgetting = [max(matrix[i][j] for i in range(j, len(matrix) - 1)) - last[j] for j in old]
    transfer = [last[j] - matrix[j][j] for j in old]
    return {
        "final_accuracy": curve[-1],
        "final_accuracy_task_mean": sum(last) / len(last),
        "average_incremental_accuracy": sum(curve) / len(curve),
        "forgetting": sum(forgetting) / len(forgetting) if forgetting else None,
        "backward_transfer": sum(transfer) / len(transfer) if transfer else None,
    }


def mean_stderr(values: list[float]) -> dict[str, float]:
    """Mean and standard error std(ddof=1) / sqrt(n) over seeds; stderr is 0.0 for a single value."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_stderr needs at least one value")
    mean = sum(values) / n
    if n == 1:
        return {"mean": mean, "stderr": 0.0, "n": 1}
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return {"mean": mean, "stderr": math.sqrt(variance / n), "n": n}


def run_metrics(results: dict) -> dict[str, float | None]:
    """A run's metrics: those stored in results.json, recomputed from its matrix when any is missing."""
    stored = results.get("metrics") or {}
    if all(name in stored for name in METRIC_NAMES):
        return {name: stored[name] for name in METRIC_NAMES}
    return compute_metrics(results["accuracy_matrix"], results["task_test_counts"])


def run_curve(results: dict) -> list[float]:
    """A run's accuracy curve: stored, or recomputed from its matrix."""
    curve = results.get("accuracy_curve")
    return list(curve) if curve else accuracy_curve(results["accuracy_matrix"], results["task_test_counts"])


#: metrics where a lower value is better (for the worst seed); every other metric is higher-is-better
LOWER_IS_BETTER = frozenset({"forgetting"})


def _summary(name: str, values: list[float | None], seeds: list[int | None]) -> dict:
    """Mean, stderr and the worst seed: a setting is only better if its worst class order improves too."""
    present = [(v, s) for v, s in zip(values, seeds, strict=True) if v is not None]
    if not present:
        return {"mean": None, "stderr": None, "n": 0, "values": values, "worst": None, "worst_seed": None}
    pick = max if name in LOWER_IS_BETTER else min
    worst, worst_seed = pick(present, key=lambda pair: pair[0])
    return {**mean_stderr([v for v, _ in present]), "values": values, "worst": worst, "worst_seed": worst_seed}


def summarize_runs(results: list[dict]) -> dict:
    """Mean and stderr over the seeds of one config: every metric, and the accuracy curve per task.

    Metrics that are None (forgetting with one task) are left out of the mean; each metric also names its
    worst seed (`worst`, `worst_seed`); the curve's task i is averaged over the runs that reached it.
    """
    if not results:
        raise ValueError("summarize_runs needs at least one run")
    metrics = [run_metrics(r) for r in results]
    seeds = [r.get("seed") for r in results]
    curves = [run_curve(r) for r in results]
    length = max(len(c) for c in curves)
    points = [mean_stderr([c[i] for c in curves if len(c) > i]) for i in range(length)]
    return {
        "seeds": seeds,
        "metrics": {name: _summary(name, [m[name] for m in metrics], seeds) for name in METRIC_NAMES},
        "accuracy_curve": {
            "mean": [p["mean"] for p in points],
            "stderr": [p["stderr"] for p in points],
            "n": [p["n"] for p in points],
        },
    }
