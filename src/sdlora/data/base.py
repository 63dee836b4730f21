"""What a benchmark hands the scenario: datasets of (input, label) in original label space, plus targets."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset


@dataclass
class BenchmarkData:
    """Splits of one dataset. `*_targets[i]` is the label of item i (read without loading inputs)."""

    train: Dataset
    train_targets: np.ndarray
    test: Dataset
    test_targets: np.ndarray
    class_names: list[str]
    val: Dataset | None = None
    val_targets: np.ndarray | None = None
    class_orders: dict[str, list[int]] = field(default_factory=dict)  # named orders, e.g. "domain"
    info: dict[str, Any] = field(default_factory=dict)  # counts, checksums... recorded in results.json

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class ListDataset(Dataset):
    """Items held in memory: (input, label) pairs."""

    def __init__(self, inputs: list[Any], labels: list[int] | np.ndarray) -> None:
        if len(inputs) != len(labels):
            raise ValueError(f"{len(inputs)} inputs but {len(labels)} labels")
        self.inputs = inputs
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.inputs[i], int(self.labels[i])


DATA_ENV = "SDLORA_DATA"


def resolve_data_root(configured: str | None) -> Path | None:
    """The data root: the config key if set, else $SDLORA_DATA, else None (the benchmark decides)."""
    value = configured or os.environ.get(DATA_ENV)
    return Path(value).expanduser() if value else None


def require_data_root(configured: str | None, what: str) -> Path:
    root = resolve_data_root(configured)
    if root is None:
        raise FileNotFoundError(
            f"{what}: no data root; set benchmark.data_root in the config or the {DATA_ENV} environment variable"
        )
    return root


def resolve_folder(folder: str, data_root: Path | None, what: str) -> Path:
    """`folder` as given when absolute, else under the data root (an error naming `what` without one)."""
    path = Path(folder).expanduser()
    if path.is_absolute():
        return path
    return (data_root if data_root is not None else require_data_root(None, what)) / path
