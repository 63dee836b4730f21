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
