"""Class-incremental metrics from the accuracy matrix (all values in percent).

a[i][j] is the accuracy on task j's test classes after training task i (j <= i), predicting by argmax over
every seen class; the matrix is stored lower-triangular (row i has i + 1 entries). n_j = test samples of
task j. A row is None when the run did not evaluate after that task (`eval_every`): the metrics that need
it are then None too, never computed from the rows that are there (`NEEDS_EVERY_ROW` says why).
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


#: metrics that read rows before the last one, and why a run that skipped any of them cannot give them
NEEDS_EVERY_ROW = {
    "average_incremental_accuracy": "the mean of the accuracy after every task: needs every row",
    "forgetting": "the best earlier accuracy of each old task: needs every row before the last",
    "backward_transfer": "each task's accuracy right after learning it: needs every row before the last",
}

Matrix = Sequence[Sequence[float] | None]


def _check(matrix: Matrix, counts: Sequence[int]) -> None:
    if not matrix:
        raise ValueError("accuracy matrix is empty")
    for i, row in enumerate(matrix):
        if row is not None and len(row) != i + 1:
            raise ValueError(f"accuracy matrix row {i} has {len(row)} entries, expected {i + 1}")
    evaluated = max((i + 1 for i, row in enumerate(matrix) if row is not None), default=0)
    if len(counts) < evaluated:
        raise ValueError(f"{len(counts)} task test counts for {evaluated} tasks")
    if any(c <= 0 for c in counts[:evaluated]):
        raise ValueError(f"task test counts must be positive, got {list(counts)}")


def accuracy_curve(matrix: Matrix, counts: Sequence[int]) -> list[float | None]:
    """curve[i] = sum_{j<=i} a[i][j] n_j / sum_{j<=i} n_j: accuracy over all seen test samples after task i
    (sample-weighted); None after a task that was not evaluated."""
    _check(matrix, counts)
    return [None if row is None else sum(a * n for a, n in zip(row, counts)) / sum(counts[: len(row)])
            for row in matrix]


def null_reasons(matrix: Matrix) -> dict[str, str]:
    """Metric -> why it is None because rows are missing (`eval_every`); {} for a full matrix."""
    skipped = [i + 1 for i, row in enumerate(matrix) if row is None]
    if not skipped:
        return {}
    reasons = {name: f"{why}; tasks {skipped} were not evaluated" for name, why in NEEDS_EVERY_ROW.items()}
    if matrix[-1] is None:
        reasons |= {name: f"the last row is missing: task {len(matrix)} was not evaluated"
                    for name in ("final_accuracy", "final_accuracy_task_mean")}
    return reasons


def compute_metrics(matrix: Matrix, counts: Sequence[int]) -> dict[str, float | None]:
    """The metrics of METRIC_NAMES; forgetting and backward transfer are None with a single task, and every
    metric named by `null_reasons` is None when rows are missing.

    forgetting = mean_{j<T-1} (max_{j<=i<=T-2} a[i][j] - a[T-1][j])   (best earlier accuracy - final)
    backward_transfer = mean_{j<T-1} (a[T-1][j] - a[j][j])
    """
    curve = accuracy_curve(matrix, counts)
    missing = null_reasons(matrix)
    if missing:
        last, last_acc = matrix[-1], curve[-1]
        values: dict[str, float | None] = dict.fromkeys(METRIC_NAMES)
        if last is not None:
            values |= {"final_accuracy": last_acc, "final_accuracy_task_mean": sum(last) / len(last)}
        return values
    rows: list[Sequence[float]] = [row for row in matrix if row is not None]
    last = rows[-1]
    old = range(len(rows) - 1)
    forgetting = [max(rows[i][j] for i in range(j, len(rows) - 1)) - last[j] for j in old]
    transfer = [last[j] - rows[j][j] for j in old]
    full = [c for c in curve if c is not None]
    return {
        "final_accuracy": full[-1],
        "final_accuracy_task_mean": sum(last) / len(last),
        "average_incremental_accuracy": sum(full) / len(full),
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


def run_curve(results: dict) -> list[float | None]:
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

    Metrics that are None (forgetting with one task, or a row skipped by `eval_every`) are left out of the
    mean; each metric also names its worst seed (`worst`, `worst_seed`); the curve's task i is averaged over
    the runs that reached and evaluated it (None when none did).
    """
    if not results:
        raise ValueError("summarize_runs needs at least one run")
    metrics = [run_metrics(r) for r in results]
    seeds = [r.get("seed") for r in results]
    curves = [run_curve(r) for r in results]
    length = max(len(c) for c in curves)
    values = [[x for x in (c[i] for c in curves if len(c) > i) if x is not None] for i in range(length)]
    points = [mean_stderr(v) if v else {"mean": None, "stderr": None, "n": 0} for v in values]
    return {
        "seeds": seeds,
        "metrics": {name: _summary(name, [m[name] for m in metrics], seeds) for name in METRIC_NAMES},
        "accuracy_curve": {
            "mean": [p["mean"] for p in points],
            "stderr": [p["stderr"] for p in points],
            "n": [p["n"] for p in points],
        },
    }
