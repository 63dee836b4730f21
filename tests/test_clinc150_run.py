"""The README's main job, shrunk: configs/clinc150.yaml with the real MiniLM on a CLINC150 subset, 2 tasks."""

import json
from pathlib import Path

import pytest

from sdlora.config import load_config

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "clinc150.yaml"


@pytest.mark.slow
def test_main_config_runs_end_to_end_on_a_subset(clinc_two_task_run):
    cfg = load_config(CONFIG)
    result = json.loads((clinc_two_task_run / "results.json").read_text())
    assert result["status"] == "complete" and result["num_tasks"] == 2
    assert result["task_sizes"] == [15, 15] and result["task_test_counts"] == [15 * 12, 15 * 12]
    assert result["backbone"]["source"] == "package" and result["data"]["sha256"].startswith("36923c37")
    # 30 intents, chance 3.3 %: the pretrained encoder with SD-LoRA must be far above it after both tasks
    assert result["metrics"]["final_accuracy"] > 70.0
    assert result["trainable_parameters"][0] > 0
    ranks = result["task_info"][-1]["ranks"]
    assert ranks == [cfg.method.options["rank"]] * 2
