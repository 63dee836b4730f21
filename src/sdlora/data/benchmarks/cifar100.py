"""CIFAR-100 (100 classes, 50,000 / 10,000) through torchvision, upsampled to 224 by the transforms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torchvision.datasets import CIFAR100 as TorchvisionCIFAR100

from sdlora.data.base import BenchmarkData, resolve_folder
from sdlora.data.benchmarks.options import CIFAR100Options
from sdlora.data.transforms import build_transforms, describe
from sdlora.registry import BENCHMARKS


@BENCHMARKS.register("cifar100")
class CIFAR100:
    """CIFAR-100 in `<data_root>/cifar100/cifar-100-python/` (torchvision downloads it when online)."""

    title = "CIFAR-100"

    Options = CIFAR100Options

    def __init__(self, options: CIFAR100Options, data_root: Path | None) -> None:
        self.options = options
        self.data_root = data_root

    def location(self) -> Path:
        return resolve_folder(self.options.folder, self.data_root, self.title)

    def _split(self, train: bool, download: bool) -> TorchvisionCIFAR100:
        root = self.location()
        transform = build_transforms(self.options)["train" if train else "test"]
        try:
            return TorchvisionCIFAR100(root=str(root), train=train, transform=transform, download=download)
        except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
            raise FileNotFoundError(
                f"CIFAR-100 not found under {root} (expected {root / 'cifar-100-python'}): set "
                "benchmark.options.download=true when online, or put the extracted cifar-100-python folder "
                "there"
            ) from err
        except OSError as err:  # the download itself failed (offline, proxy, HTTP error)
            raise FileNotFoundError(
                f"CIFAR-100 is not under {root} and could not be downloaded ({err}); offline? put the "
                f"extracted cifar-100-python folder in {root}"
            ) from err

    def load(self, download: bool | None = None) -> BenchmarkData:
        """Both splits; `download` overrides the option (`sdlora data check` never downloads)."""
        fetch = self.options.download if download is None else download
        train, test = self._split(True, fetch), self._split(False, False)
        return BenchmarkData(
            train=train, train_targets=np.asarray(train.targets, dtype=np.int64),
            test=test, test_targets=np.asarray(test.targets, dtype=np.int64),
            class_names=list(train.classes),
            info={"benchmark": self.title, "root": str(self.location()),
                  "counts": {"train": len(train), "test": len(test)},
                  "transforms": describe(self.options)},
        )

    def load_local(self) -> BenchmarkData:
        """Load without downloading (what `sdlora data check` uses)."""
        return self.load(download=False)
