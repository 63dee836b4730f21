"""Class-incremental scenario: class order, task split, and label remapping (PILOT's DataManager).

Order: a seeded permutation (`np.random.seed(seed); np.random.permutation(n)`, as PILOT and the official
SD-LoRA code), the sorted order, a benchmark's named order, or an explicit list. Tasks are consecutive
blocks of the order: `init_classes`, then `increment` each; a remainder becomes one more task. Labels are
remapped to their position in the order, so task t owns labels [known_t, known_t + size_t).
"""

from __future__ import annotations

from collections.abc import Sequence
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
        if num_tasks > len(sizes):
            raise ValueError(f"num_tasks={num_tasks}, but {num_classes} classes split as init_classes={first}, "
                             f"increment={increment} make {len(sizes)} tasks; set num_tasks <= {len(sizes)}")
        sizes = sizes[:num_tasks]
    return sizes


def check_labels(data: BenchmarkData) -> None:
    """Every split's labels lie in 0..K-1: a label outside (-1 from a list, say) would be remapped to another class
    without a word (numpy reads label_map[-1] as the last entry)."""
    for split in ("train", "test", "val"):
        targets = getattr(data, f"{split}_targets")
        if targets is None or not len(targets):
            continue
        targets = np.asarray(targets)
        bad = np.unique(targets[(targets < 0) | (targets >= data.num_classes)])
        if bad.size:
            raise ValueError(f"the benchmark's {split} labels must lie in 0..{data.num_classes - 1}; found "
                             f"{bad[:10].tolist()}")


def check_same_classes(recorded: Sequence[str], current: Sequence[str], what: str) -> None:
    """The classes a run trained on (`recorded`, in label order) are still the first ones of the data read now
    (`current`): a file edited since the run (a class added that sorts first, say) would otherwise shift every
    label onto another class without a word. `what`: the command, for the message."""
    recorded, current = list(recorded), list(current)[:len(recorded)]
    if current == recorded:
        return
    changed = [f"{i}: {a!r} -> {b!r}" for i, (a, b) in enumerate(zip(recorded, current, strict=False)) if a != b]
    if len(current) < len(recorded):
        changed.append(f"{len(recorded) - len(current)} class(es) gone")
    raise ValueError(f"{what}: the benchmark's classes are not the ones the run trained on (label: trained -> now: "
                     f"{'; '.join(changed[:5])}{'; ...' if len(changed) > 5 else ''}); the data changed since the "
                     "run: give it the data it trained on")


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
        check_labels(data)
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

    def check_samples(self, eval_split: str) -> None:
        """Before any training: every class of the run's tasks has training samples and every task has samples in
        `eval_split`, so a run does not stop at the task that lacks them, hours in, with a message about a count."""
        targets = getattr(self.data, f"{eval_split}_targets")
        if targets is None:
            raise ValueError(f"eval_split: {eval_split!r}, but this benchmark has no {eval_split!r} split")
        names, used = self.class_names(), int(self.bounds[-1])
        counts = {split: np.bincount(self.label_map[np.asarray(t)], minlength=len(names))
                  for split, t in (("train", self.data.train_targets), (eval_split, targets))}
        empty = [names[c] for c in range(used) if counts["train"][c] == 0]
        if empty:
            raise ValueError(f"{len(empty)} class(es) have no training samples: {empty[:10]} (an empty class "
                             "folder, or a class only in the test data?)")
        for t in range(self.num_tasks):
            low, high = int(self.bounds[t]), int(self.bounds[t + 1])
            if counts[eval_split][low:high].sum() == 0:
                raise ValueError(f"task {t + 1} has no {eval_split} samples (its classes {names[low:high][:10]}): "
                                 "its accuracy cannot be measured")

    def task_of_label(self, labels: np.ndarray) -> np.ndarray:
        """Task index of each remapped label."""
        return np.searchsorted(self.bounds, labels, side="right") - 1
