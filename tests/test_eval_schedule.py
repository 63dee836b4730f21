"""`eval_every`: evaluation after every k-th task and the last; skipped rows are null, and so is every metric
that needs them (with the reason), while the final row and the metrics read from it stay exact."""

from __future__ import annotations

import io
import json

import pytest

from engine_helpers import check_resume_equals_uninterrupted, tiny
from sdlora.config import load_config
from sdlora.engine.metrics import NEEDS_EVERY_ROW, compute_metrics, null_reasons, summarize_runs
from sdlora.engine.runner import run_config

FULL = [[90.0], [80.0, 70.0], [60.0, 50.0, 40.0]]
COUNTS = [10, 10, 20]


def test_metrics_from_a_matrix_with_skipped_rows():
    sparse = [None, [80.0, 70.0], [60.0, 50.0, 40.0]]
    full, part = compute_metrics(FULL, COUNTS), compute_metrics(sparse, COUNTS)
    assert part["final_accuracy"] == full["final_accuracy"] == pytest.approx(47.5)
    assert part["final_accuracy_task_mean"] == full["final_accuracy_task_mean"] == 50.0
    for name in NEEDS_EVERY_ROW:
        assert full[name] is not None and part[name] is None
    reasons = null_reasons(sparse)
    assert set(reasons) == set(NEEDS_EVERY_ROW) and "tasks [1]" in reasons["forgetting"]
    assert null_reasons(FULL) == {}
    unfinished = null_reasons([[90.0], None])  # mid-run, the latest task skipped
    assert "final_accuracy" in unfinished and compute_metrics([[90.0], None], COUNTS)["final_accuracy"] is None


def test_summary_skips_unevaluated_points():
    runs = [{"accuracy_matrix": [None, [80.0, 70.0]], "task_test_counts": [10, 10], "seed": s} for s in (1, 2)]
    summary = summarize_runs(runs)
    assert summary["accuracy_curve"]["mean"] == [None, 75.0]
    assert summary["metrics"]["final_accuracy"]["mean"] == 75.0
    assert summary["metrics"]["forgetting"]["mean"] is None


def run(tmp_path, name: str, **top) -> dict:
    data = tiny(**top)
    run_config(load_config(data=data), tmp_path / name, quiet=True, stream=io.StringIO())
    folder = tmp_path / name / f"seed-{data['seeds'][0]}"
    assert (folder / "metrics.csv").is_file() and (folder / "accuracy_matrix.png").is_file()
    return json.loads((folder / "results.json").read_text())


@pytest.mark.parametrize(("every", "rows"), [(2, [False, True, True]), (0, [False, False, True])])
def test_schedule_keeps_the_final_row_exact_and_nulls_the_rest(tmp_path, every, rows):
    full = run(tmp_path, "full")
    sparse = run(tmp_path, f"every{every}", eval_every=every)
    assert [row is not None for row in sparse["accuracy_matrix"]] == rows
    assert sparse["accuracy_matrix"][-1] == full["accuracy_matrix"][-1]  # the same final model, evaluated alike
    for i, row in enumerate(sparse["accuracy_matrix"]):
        if row is not None:
            assert row == full["accuracy_matrix"][i]
    evaluation = sparse["evaluation"]
    assert evaluation["every"] == every and evaluation["tasks"] == [i + 1 for i, r in enumerate(rows) if r]
    assert evaluation["exact"] == ["final_accuracy", "final_accuracy_task_mean"]
    assert set(evaluation["null"]) == set(NEEDS_EVERY_ROW)
    for name in evaluation["exact"]:
        assert sparse["metrics"][name] == full["metrics"][name]
    for name in evaluation["null"]:
        assert sparse["metrics"][name] is None
    assert full["evaluation"] == {"every": 1, "tasks": [1, 2, 3], "exact": list(full["metrics"]), "null": {}}


def test_schedule_resumes_to_the_same_results(tmp_path):
    result = check_resume_equals_uninterrupted(tmp_path, tiny(eval_every=2), stop_at=(0, 2, True))
    assert result["accuracy_matrix"][0] is None


def test_skipped_evaluations_leave_training_randomness_alone(tmp_path):
    """A tiny BERT with dropout: the final row is the full schedule's only if skipping an evaluation does not
    shift the random stream that training's dropout reads."""
    from test_length_order import text_run

    results = {}
    for every in (1, 0):
        data = {**text_run(tmp_path), "eval_every": every}
        run_config(load_config(data=data), tmp_path / f"e{every}", quiet=True, stream=io.StringIO())
        results[every] = json.loads((tmp_path / f"e{every}" / "seed-3" / "results.json").read_text())
    assert results[0]["accuracy_matrix"][-1] == results[1]["accuracy_matrix"][-1]
    assert results[0]["task_info"] == results[1]["task_info"]  # prototype shifts: the same features
