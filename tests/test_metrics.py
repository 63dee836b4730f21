"""Metrics, metrics.csv and plots against hand-computed values."""

from __future__ import annotations

import csv

import pytest

from sdlora.engine.csvlog import write_metrics_csv
from sdlora.engine.metrics import (
    METRIC_NAMES,
    accuracy_curve,
    compute_metrics,
    mean_stderr,
    summarize_runs,
)
from sdlora.engine.plots import plot_accuracy_curve, plot_accuracy_matrix, plot_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# 3 tasks, unequal test counts; task 0 peaks after task 1 (95 > 90), so its best is not its first.
MATRIX = [
    [90.0],
    [95.0, 70.0],
    [85.0, 64.0, 75.0],
]
COUNTS = [100, 50, 200]


def fake_results(matrix: list[list[float]], counts: list[int], seed: int = 1, **extra) -> dict:
    return {
        "method": "sdlora",
        "benchmark": "clinc150",
        "seed": seed,
        "num_tasks": len(matrix),
        "task_sizes": [15] * len(matrix),
        "accuracy_matrix": matrix,
        "task_test_counts": counts,
        "accuracy_curve": accuracy_curve(matrix, counts),
        "metrics": compute_metrics(matrix, counts),
        "status": "complete",
        **extra,
    }


def test_accuracy_curve_is_sample_weighted():
    # after task 1: (95*100 + 70*50) / 150 = 13000 / 150; after task 2: (8500 + 3200 + 15000) / 350
    assert accuracy_curve(MATRIX, COUNTS) == pytest.approx([90.0, 86.666667, 76.285714], abs=1e-6)


def test_compute_metrics_three_tasks():
    m = compute_metrics(MATRIX, COUNTS)
    assert set(m) == set(METRIC_NAMES)
    assert m["final_accuracy"] == pytest.approx(76.285714, abs=1e-6)  # 26700 / 350
    assert m["final_accuracy_task_mean"] == pytest.approx(74.666667, abs=1e-6)  # (85 + 64 + 75) / 3
    # (90 + 86.666667 + 76.285714) / 3
    assert m["average_incremental_accuracy"] == pytest.approx(84.317460, abs=1e-6)
    # task 0: best earlier 95 (after task 1) - 85 = 10; task 1: 70 - 64 = 6; mean 8
    # (measuring from the first accuracy instead would give (5 + 6) / 2 = 5.5)
    assert m["forgetting"] == pytest.approx(8.0)
    # task 0: 85 - 90 = -5; task 1: 64 - 70 = -6; mean -5.5
    assert m["backward_transfer"] == pytest.approx(-5.5)


def test_compute_metrics_single_task():
    m = compute_metrics([[88.0]], [10])
    assert m["final_accuracy"] == m["final_accuracy_task_mean"] == m["average_incremental_accuracy"] == 88.0
    assert m["forgetting"] is None
    assert m["backward_transfer"] is None


def test_matrix_shape_is_checked():
    with pytest.raises(ValueError, match="row 1 has 1 entries"):
        compute_metrics([[90.0], [80.0]], [10, 10])
    with pytest.raises(ValueError, match="task test counts"):
        accuracy_curve([[90.0], [80.0, 70.0]], [10])


def test_mean_stderr():
    stats = mean_stderr([1, 2, 3, 4])
    assert stats["mean"] == 2.5
    assert stats["stderr"] == pytest.approx(0.6455, abs=1e-4)  # std(ddof=1) = 1.2910, / sqrt(4)
    assert stats["n"] == 4
    assert mean_stderr([7.0]) == {"mean": 7.0, "stderr": 0.0, "n": 1}
    with pytest.raises(ValueError):
        mean_stderr([])


def test_summarize_runs_over_three_seeds():
    counts = [10, 10]
    runs = [
        fake_results([[90.0], [80.0, 70.0]], counts, seed=1),  # curve [90, 75], forgetting 10
        fake_results([[92.0], [84.0, 74.0]], counts, seed=2),  # curve [92, 79], forgetting 8
        fake_results([[94.0], [88.0, 72.0]], counts, seed=3),  # curve [94, 80], forgetting 6
    ]
    summary = summarize_runs(runs)
    assert summary["seeds"] == [1, 2, 3]
    final = summary["metrics"]["final_accuracy"]
    # mean 78, deviations -3, 1, 2 -> var 14 / 2 = 7, stderr sqrt(7 / 3)
    assert final["mean"] == pytest.approx(78.0)
    assert final["stderr"] == pytest.approx(1.527525, abs=1e-6)
    assert final["n"] == 3 and final["values"] == [75.0, 79.0, 80.0]
    assert summary["metrics"]["average_incremental_accuracy"]["mean"] == pytest.approx(85.0)  # 82.5 85.5 87
    forgetting = summary["metrics"]["forgetting"]
    assert forgetting["mean"] == pytest.approx(8.0)
    assert forgetting["stderr"] == pytest.approx(1.154701, abs=1e-6)  # 2 / sqrt(3)
    # the worst seed beside the mean: the lowest accuracy, the highest forgetting
    assert (final["worst"], final["worst_seed"]) == (75.0, 1)
    assert (forgetting["worst"], forgetting["worst_seed"]) == (10.0, 1)
    aaa = summary["metrics"]["average_incremental_accuracy"]
    assert (aaa["worst"], aaa["worst_seed"]) == (82.5, 1)
    assert summary["accuracy_curve"]["mean"] == pytest.approx([92.0, 78.0])
    assert summary["accuracy_curve"]["stderr"] == pytest.approx([1.154701, 1.527525], abs=1e-6)


def test_summarize_single_task_runs_keeps_none():
    summary = summarize_runs([fake_results([[88.0]], [10]), fake_results([[90.0]], [10], seed=2)])
    assert summary["metrics"]["forgetting"]["mean"] is None
    assert summary["metrics"]["final_accuracy"]["mean"] == pytest.approx(89.0)


def test_write_metrics_csv(tmp_path):
    results = fake_results([[90.0], [80.0, 60.0]], [30, 20], task_sizes=[3, 2],
                           trainable_parameters=[1000, 1200], task_times_s=[1.5, 2.25])
    path = tmp_path / "metrics.csv"
    write_metrics_csv(results, path)
    rows = list(csv.reader(path.open()))
    assert rows == [
        ["task", "classes_seen", "accuracy", "task_mean_accuracy", "acc_task_1", "acc_task_2",
         "trainable_parameters", "time_s"],
        ["1", "3", "90.0000", "90.0000", "90.0000", "", "1000", "1.50"],
        # (80*30 + 60*20) / 50 = 72; (80 + 60) / 2 = 70
        ["2", "5", "72.0000", "70.0000", "80.0000", "60.0000", "1200", "2.25"],
    ]


def test_plots_write_png(tmp_path):
    results = fake_results(MATRIX, COUNTS)
    other = fake_results([[80.0], [85.0, 60.0], [70.0, 55.0, 65.0]], COUNTS, seed=2)
    paths = [tmp_path / "curve.png", tmp_path / "matrix.png", tmp_path / "sub" / "compare.png"]
    plot_accuracy_curve(results, paths[0])
    plot_accuracy_matrix(results, paths[1])
    plot_curves({"sdlora": [results, other], "seq_lora": [other]}, paths[2])
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 1000
