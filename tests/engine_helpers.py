"""A tiny config (random 32x32 ViT, 6 synthetic classes in 3 tasks) for engine tests."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

TINY_VIT = {"model": "vit_tiny_patch16_224", "pretrained": False,
            "model_kwargs": {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}}

TINY: dict[str, Any] = {
    "benchmark": {"name": "synthetic", "init_classes": 2, "increment": 2,
                  "options": {"num_classes": 6, "train_per_class": 6, "test_per_class": 3, "separation": 3.0}},
    "backbone": {"name": "timm_vit", "options": TINY_VIT},
    "method": {"name": "linear_probe"},
    "train": {"optimizer": "sgd", "lr": 0.05, "epochs": 2, "batch_size": 4, "eval_batch_size": 16},
    "seeds": [3],
    "deterministic": True,
}

TIMING = {"wall_time_s", "task_times_s"}


def tiny(**sections: Any) -> dict[str, Any]:
    data = copy.deepcopy(TINY)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def results_without_timing(folder: Path) -> dict[str, Any]:
    data = json.loads((folder / "results.json").read_text())
    for key in TIMING:
        data.pop(key)
    return data
