"""Class-incremental scenario: class order, task split, and label remapping (PILOT's DataManager).

Order: a seeded permutation (`np.random.seed(seed); np.random.permutation(n)`, as PILOT and the official
SD-LoRA code), the sorted order, a benchmark's named order, or an explicit list. Tasks are consecutive
blocks of the order: `init_classes`, then `increment` each; a remainder becomes one more task. Labels are
remapped to their position in the order, so task t owns labels [known_t, known_t + size_t).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from sdlora.data.base import BenchmarkData


@dataclass(frozen=True)
class TaskInfo:
    """Task `index` (0-based) owns remapped labels [known, total)."""

    index: int
    known: int
    total: int
    num_tasks: int

    @property
    def size(self) -> int:
        return self.total - self.known


def make_class_order(spec: str | list[int], num_classes: int, seed: int,
                     named: dict[str, list[int]] | None = None) -> list[int]:
    named = named or {}
    if isinstance(spec, list):
        order = [int(c) for c in spec]
        if sorted(order) != list(range(num_classes)):
            raise ValueError(f"class_order: the list must be a permutation of 0..{num_classes - 1}")
        return order
    if spec == "permutation":
        return np.random.RandomState(seed).permutation(num_classes).tolist()
    if spec == "sorted":
        return list(range(num_classes))
    if spec in named:
        return list(named[spec])
    allowed = ", ".join(["permutation", "sorted", *sorted(named), "a list of class ids"])
    raise ValueError(f"class_order: unknown order {spec!r}; allowed: {allowed}")


def split_tasks(num_classes: int, init_classes: int | None, increment: int,
                num_tasks: int | None = None) -> list[int]:
    """Sizes of consecutive tasks; a remainder becomes one more task."""
    first = increment if init_classes is None else init_classes
    if first <= 0 or increment <= 0:
        raise ValueError(f"init_classes and increment must be positive, got {first} and {increment}")
    if first > num_classes:
        raise ValueError(f"init_classes={first} exceeds the {num_classes} classes of the benchmark")
    sizes = [first]
    left = num_classes - first
    while left > 0:
        sizes.append(min(increment, left))
        left -= sizes[-1]
    if num_tasks is not None:
        if num_tasks <= 0:
            raise ValueError(f"num_tasks must be positive, got {num_tasks}")
        sizes = sizes[:num_tasks]
    return sizes


class RemappedSubset(Dataset):
    """Items of `base` at `indices`, labels mapped through `label_map` (original -> position in order)."""

    def __init__(self, base: Dataset, indices: np.ndarray, targets: np.ndarray, label_map: np.ndarray) -> None:
        self.base = base
        self.indices = indices
        self.targets = label_map[targets[indices]]
        self.label_map = label_map

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        x, _ = self.base[int(self.indices[i])]
        return x, int(self.targets[i])


class Scenario:
    """Tasks over one benchmark, under one seed."""

    def __init__(self, data: BenchmarkData, class_order: str | list[int], init_classes: int | None,
                 increment: int, seed: int, num_tasks: int | None = None) -> None:
        self.data = data
        self.class_order = make_class_order(class_order, data.num_classes, seed, data.class_orders)
        self.task_sizes = split_tasks(data.num_classes, init_classes, increment, num_tasks)
        self.label_map = np.full(data.num_classes, -1, dtype=np.int64)
        self.label_map[np.asarray(self.class_order)] = np.arange(data.num_classes)
        self.bounds = np.concatenate([[0], np.cumsum(self.task_sizes)]).astype(int)

    @property
    def num_tasks(self) -> int:
        return len(self.task_sizes)

    def task(self, t: int) -> TaskInfo:
        return TaskInfo(t, int(self.bounds[t]), int(self.bounds[t + 1]), self.num_tasks)

    def class_names(self, upto: int | None = None) -> list[str]:
        names = [self.data.class_names[c] for c in self.class_order]
        return names if upto is None else names[:upto]

    def _subset(self, split: str, low: int, high: int) -> RemappedSubset:
        base = getattr(self.data, split)
        targets = getattr(self.data, f"{split}_targets")
        if base is None or targets is None:
            raise ValueError(f"this benchmark has no {split!r} split")
        mapped = self.label_map[targets]
        indices = np.flatnonzero((mapped >= low) & (mapped < high))
        return RemappedSubset(base, indices, targets, self.label_map)

    def train_set(self, t: int) -> RemappedSubset:
        """Training data of task t only (rehearsal-free)."""
        info = self.task(t)
        return self._subset("train", info.known, info.total)

    def eval_set(self, t: int, split: str = "test") -> RemappedSubset:
        """Evaluation data of every class seen up to task t."""
        return self._subset(split, 0, self.task(t).total)

    def task_of_label(self, labels: np.ndarray) -> np.ndarray:
        """Task index of each remapped label."""
        return np.searchsorted(self.bounds, labels, side="right") - 1
