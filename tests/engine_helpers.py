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


def tiny_sdlora(**classifier: Any) -> dict[str, Any]:
    """`tiny` SD-LoRA (rank 2, 2 epochs) with class-mean head init and these classifier settings."""
    return tiny(method={"name": "sdlora", "options": {"rank": 2},
                        "classifier": {"head_init": "class_mean", **classifier}}, train={"epochs": 2})


def check_classifier_refused(method: str, classifier: dict[str, Any], message: str) -> None:
    """`method` (sdlora at rank 2) with `classifier` settings is refused, the ConfigError matching `message`."""
    import pytest

    from sdlora.config import load_config
    from sdlora.engine import build
    from sdlora.typed import ConfigError

    data = tiny(method={"name": method, **({"options": {"rank": 2}} if method == "sdlora" else {}),
                        "classifier": classifier})
    with pytest.raises(ConfigError, match=message):
        build.validate_plugins(load_config(data=data))


def results_without_timing(folder: Path) -> dict[str, Any]:
    data = json.loads((folder / "results.json").read_text())
    for key in TIMING:
        data.pop(key)
    return data


class Interrupt(Exception):
    """Raised from a checkpoint hook to stop a run where a test wants it stopped."""


def check_resume_equals_uninterrupted(tmp_path: Path, data: dict[str, Any],
                                      stop_at: tuple[int, int, bool] = (1, 1, False)) -> dict[str, Any]:
    """Run `data` straight through, then again stopped at checkpoint `stop_at` (task, epochs done, task
    finished) and resumed; asserts both give the same results.json (timings aside); returns it."""
    import io

    import pytest

    from sdlora.config import load_config
    from sdlora.engine.runner import run_config

    def go(name: str, **kw: Any) -> None:
        run_config(load_config(data=data), tmp_path / name, quiet=True, stream=io.StringIO(), **kw)

    def hook(task: int, epochs: int, finished: bool) -> None:
        if (task, epochs, finished) == stop_at:
            raise Interrupt

    go("ref")
    with pytest.raises(Interrupt):
        go("cut", on_checkpoint=hook)
    go("cut", resume=True)
    seed = f"seed-{data['seeds'][0]}"
    ref = results_without_timing(tmp_path / "ref" / seed)
    assert results_without_timing(tmp_path / "cut" / seed) == ref
    return ref
