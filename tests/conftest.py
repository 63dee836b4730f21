"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_data_root() -> Path:
    """$SDLORA_DATA if set, else the workplace's `shared/data` beside the clone."""
    env = os.environ.get("SDLORA_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def data_root() -> Path:
    return shared_data_root()


@pytest.fixture(scope="session")
def tiny_vit_run(tmp_path_factory) -> Path:
    """A finished SD-LoRA run (tiny random ViT, 6 synthetic classes, 3 tasks): its seed folder. Read only."""
    from export_helpers import train, vit_run_config

    return train(vit_run_config(), tmp_path_factory.mktemp("vit") / "run")


@pytest.fixture(scope="session")
def tiny_text_run(tmp_path_factory) -> Path:
    """A finished SD-LoRA run (tiny random BERT, 4 intents from CSV files, 2 tasks): its seed folder. Read only."""
    from export_helpers import text_run_config, train

    folder = tmp_path_factory.mktemp("text")
    return train(text_run_config(folder), folder / "run")


@pytest.fixture(scope="session")
def clinc_two_task_run(tmp_path_factory, data_root) -> Path:
    """configs/clinc150.yaml cut down (real MiniLM, 2 tasks of 15 intents, 12 samples per intent, seed 1993): its
    seed folder. Read only: copy it before changing it."""
    import io

    from sdlora.config import load_config
    from sdlora.engine.runner import run_config

    config = Path(__file__).resolve().parents[1] / "configs" / "clinc150.yaml"
    cfg = load_config(config, [f"benchmark.data_root={data_root}", "benchmark.options.max_per_class=12",
                               "benchmark.num_tasks=2", "seeds=[1993]"])
    out = tmp_path_factory.mktemp("clinc") / "run"
    run_config(cfg, out, quiet=True, stream=io.StringIO())
    return out / "seed-1993"
