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
