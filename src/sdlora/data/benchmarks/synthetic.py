"""A synthetic benchmark of random tensors with class-dependent means: only for tests and smoke runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sdlora.data.base import BenchmarkData, ListDataset
from sdlora.data.benchmarks.options import SyntheticOptions
from sdlora.registry import BENCHMARKS


@BENCHMARKS.register("synthetic")
class Synthetic:
    """Random tensors of `shape` whose mean depends on the class (tests and smoke runs only)."""

    Options = SyntheticOptions

    def __init__(self, options: SyntheticOptions, data_root: Path | None = None) -> None:
        self.options = options

    def _split(self, per_class: int, gen: torch.Generator) -> tuple[list[torch.Tensor], np.ndarray]:
        o = self.options
        means = torch.randn(o.num_classes, *o.shape, generator=torch.Generator().manual_seed(o.seed))
        labels = np.repeat(np.arange(o.num_classes), per_class)
        xs = [(0.5 + 0.25 * (o.separation * means[c] + torch.randn(*o.shape, generator=gen))).clamp(0, 1)
              for c in labels]
        return xs, labels

    def load(self) -> BenchmarkData:
        gen = torch.Generator().manual_seed(self.options.seed + 1)
        train_x, train_y = self._split(self.options.train_per_class, gen)
        test_x, test_y = self._split(self.options.test_per_class, gen)
        val_x, val_y = self._split(self.options.test_per_class, gen)
        return BenchmarkData(
            train=ListDataset(train_x, train_y), train_targets=train_y,
            test=ListDataset(test_x, test_y), test_targets=test_y,
            val=ListDataset(val_x, val_y), val_targets=val_y,
            class_names=[f"class_{c:03d}" for c in range(self.options.num_classes)],
            info={"train": len(train_y), "test": len(test_y)},
        )
