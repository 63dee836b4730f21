"""metrics.csv beside results.json: one row per finished task (tasks and acc_task_j columns are 1-based)."""

from __future__ import annotations

import csv
import os
from itertools import accumulate
from pathlib import Path

from sdlora.engine.metrics import accuracy_curve


def _fmt(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _at(values: list | None, i: int) -> float | None:
    return values[i] if values is not None and i < len(values) else None


def write_metrics_csv(results: dict, path: str | Path) -> None:
    """Columns: task, classes_seen, accuracy (sample-weighted curve), task_mean_accuracy, acc_task_1..T
    (a[i][j], empty when j > i), trainable_parameters, time_s. Accuracies in percent, 4 decimals."""
    matrix = results["accuracy_matrix"]
    curve = results.get("accuracy_curve") or accuracy_curve(matrix, results["task_test_counts"])
    seen = list(accumulate(results["task_sizes"]))
    params = results.get("trainable_parameters")
    times = results.get("task_times_s")
    tasks = len(matrix)
    header = ["task", "classes_seen", "accuracy", "task_mean_accuracy"]
    header += [f"acc_task_{j + 1}" for j in range(tasks)] + ["trainable_parameters", "time_s"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")  # atomic: a kill never leaves half a file
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for i, row in enumerate(matrix):
            mean = None if row is None else sum(row) / len(row)  # None: not evaluated (`eval_every`), empty cells
            cells = [i + 1, seen[i], _fmt(curve[i], 4), _fmt(mean, 4)]
            cells += [_fmt(_at(row, j), 4) for j in range(tasks)]
            count = _at(params, i)
            cells += ["" if count is None else int(count), _fmt(_at(times, i), 2)]
            writer.writerow(cells)
    os.replace(tmp, path)
