"""Image files on disk: read-only listing of `split/class/image` trees and a dataset that decodes lazily.

The listing never decodes an image (targets come from folder names or split lists), and nothing here
moves, renames or deletes a user's file. An unreadable image either stops the run with its path
(`on_corrupt: stop`) or is skipped with a warning naming it (`on_corrupt: skip`): the item is then served
by the next readable image of the same class, so labels and dataset length stay as listed.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from sdlora.data.base import BenchmarkData, resolve_folder
from sdlora.data.image_options import FileOptions, FolderSplitOptions, NamedFolderOptions, OnCorrupt
from sdlora.data.transforms import build_transforms, describe

#: what PIL raises for missing, truncated or undecodable files
READ_ERRORS: tuple[type[BaseException], ...] = (OSError, SyntaxError, ValueError)


class CorruptImageError(OSError):
    """An image file could not be read; the message names the file."""


#: single-channel modes whose values go past 255 (16-bit PNG / TIFF greyscale, 32-bit integers, floats)
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def to_8bit(image: Image.Image) -> Image.Image:
    """A 16-bit (or wider) greyscale image as 8-bit "L", its range scaled, not clipped: PIL's own `convert("RGB")`
    clips at 255, so a 16-bit scan would turn white. Integers above 255 are read as 16-bit (v / 257); floats in
    [0, 1] as fractions of white, others clipped to [0, 255]."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F" and values.size and values.max() <= 1.0:
        values = values * 255.0
    elif image.mode != "F" and values.size and values.max() > 255:
        values = values / 257.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def open_rgb(path: str | Path) -> Image.Image:
    """Decode one image fully, as RGB (errors surface here, not later in a transform); wide greyscale is scaled to
    8 bits first (`to_8bit`)."""
    with Image.open(path) as image:
        return (to_8bit(image) if image.mode in WIDE_MODES else image).convert("RGB")


def verify_image(path: str | Path) -> None:
    """Raise if the file is not a readable image: PIL `verify()`, then a cheap reduced decode.

    `verify()` checks the structure (PNG checksums) but not JPEG scan data; the reduced decode (`draft`)
    catches truncated JPEGs at a fraction of the full decoding cost.
    """
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        image.draft("RGB", (64, 64))
        image.load()


class ImageFiles(Dataset):
    """(path, label) samples decoded on access; `targets` is known without opening any file."""

    def __init__(self, samples: list[tuple[str, int]], transform: Callable[[Image.Image], Any] | None = None,
                 on_corrupt: str = "stop") -> None:
        if on_corrupt not in ("skip", "stop"):
            raise ValueError(f"on_corrupt: {on_corrupt!r} is not allowed; allowed: 'skip' | 'stop'")
        self.paths = [str(p) for p, _ in samples]
        self.targets = np.asarray([int(label) for _, label in samples], dtype=np.int64)
        self.transform = transform
        self.on_corrupt = on_corrupt
        self.skipped: set[str] = set()
        self._by_class: dict[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def _same_class(self, i: int) -> np.ndarray:
        """Indices of i's class, starting at i and wrapping around."""
        if self._by_class is None:
            self._by_class = {int(c): np.flatnonzero(self.targets == c) for c in np.unique(self.targets)}
        members = self._by_class[int(self.targets[i])]
        start = int(np.searchsorted(members, i))
        return np.roll(members, -start)

    def _read(self, j: int) -> Image.Image | None:
        """The decoded image, or None when it is unreadable and `on_corrupt` is skip."""
        path = self.paths[j]
        try:
            return open_rgb(path)
        except READ_ERRORS as err:
            if self.on_corrupt == "stop":
                raise CorruptImageError(
                    f"unreadable image {path}: {err} (to skip such files, continue with `--set "
                    "benchmark.options.on_corrupt=skip --resume`; `sdlora data check` lists every one)"
                ) from err
            if path not in self.skipped:
                self.skipped.add(path)
                warnings.warn(f"skipping unreadable image {path}: {err}", stacklevel=3)
            return None

    def __getitem__(self, i: int) -> tuple[Any, int]:
        label = int(self.targets[i])
        for j in self._same_class(i):
            image = self._read(int(j))
            if image is not None:
                return (self.transform(image) if self.transform is not None else image), label
        raise CorruptImageError(f"no readable image left in class {label} (item {i}: {self.paths[i]})")


@dataclass
class Inventory:
    """What is on disk, without decoding: samples per split, the class names (index = label), problems."""

    class_names: list[str]
    splits: dict[str, list[tuple[str, int]]]
    locations: dict[str, str] = field(default_factory=dict)  # split -> folder or list file
    fatal: list[str] = field(default_factory=list)  # loading refuses these (labels would be wrong)
    warnings: list[str] = field(default_factory=list)  # loading warns (missing or empty class folders)

    @property
    def problems(self) -> list[str]:
        return [*self.fatal, *self.warnings]

    def counts(self) -> dict[str, int]:
        return {split: len(samples) for split, samples in self.splits.items()}

    def classes_per_split(self) -> dict[str, int]:
        return {split: len({label for _, label in samples}) for split, samples in self.splits.items()}


def is_visible_image(path: Path, root: Path) -> bool:
    """An image file by its extension (torchvision's list), with no hidden part below `root`: macOS' `._x.png`
    resource forks and `.thumbnails/` are not images of the class."""
    parts = path.relative_to(root).parts
    return path.suffix.lower() in IMG_EXTENSIONS and not any(part.startswith(".") for part in parts)


def image_files(folder: Path) -> list[Path]:
    """Every visible image file below `folder`, sorted (`is_visible_image`)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_visible_image(p, folder))


def class_folders(directory: Path) -> list[str]:
    """Sorted names of the visible sub-folders (one per class, as torchvision's ImageFolder)."""
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


def scan_split_folders(root: Path, split_dirs: dict[str, str]) -> Inventory:
    """List `root/<split_dir>/<class>/<image>`; labels follow the sorted class folders of the first split.

    Raises FileNotFoundError when a split folder is missing or has no class folders; class folders that
    are missing from a split, present only in a later split, or empty are reported as problems.
    """
    dirs = {split: root / sub for split, sub in split_dirs.items()}
    for split, directory in dirs.items():
        if not directory.is_dir():
            found = ", ".join(sorted(p.name for p in root.iterdir())) if root.is_dir() else "(no such folder)"
            raise FileNotFoundError(f"{split} folder not found: {directory} (contents of {root}: {found})")
    first = next(iter(dirs))
    classes = class_folders(dirs[first])
    if not classes:
        raise FileNotFoundError(f"no class folders in {dirs[first]}")
    class_to_idx = {name: i for i, name in enumerate(classes)}
    inventory = Inventory(classes, {}, {s: str(d) for s, d in dirs.items()})
    for split, directory in dirs.items():
        present = set(class_folders(directory))
        for name in sorted(present - set(classes)):
            inventory.fatal.append(f"class folder {directory / name} has no counterpart in {dirs[first]}")
        for name in classes:
            if name not in present:
                inventory.warnings.append(f"missing class folder {directory / name}")
        samples = make_dataset(str(directory), {c: i for c, i in class_to_idx.items() if c in present},
                               is_valid_file=lambda p, d=directory: is_visible_image(Path(p), d), allow_empty=True)
        with_images = {label for _, label in samples}
        for name in sorted(present & set(classes)):
            if class_to_idx[name] not in with_images:
                inventory.warnings.append(f"class folder {directory / name} has no image files")
        inventory.splits[split] = samples
    return inventory


def build_splits(inventory: Inventory, options: FileOptions,
                 transforms: dict[str, Any] | None = None) -> dict[str, ImageFiles]:
    """One lazily decoding dataset per split: train augmentation for `train`, the test transform otherwise."""
    transforms = transforms if transforms is not None else build_transforms(options)
    return {split: ImageFiles(samples, transforms.get(split, transforms["test"]), options.on_corrupt)
            for split, samples in inventory.splits.items()}


def checked_data(inventory: Inventory, options: FileOptions, info: dict[str, Any]) -> BenchmarkData:
    """Wrap an inventory as `BenchmarkData`: refuse fatal problems, warn about the others."""
    if inventory.fatal:
        raise ValueError(f"{info.get('benchmark', 'benchmark')}: " + "; ".join(inventory.fatal))
    for problem in inventory.warnings:
        warnings.warn(f"{info.get('benchmark', 'benchmark')}: {problem}", stacklevel=3)
    transforms = build_transforms(options)
    sets = build_splits(inventory, options, transforms)
    val = sets.get("val")
    return BenchmarkData(
        train=sets["train"], train_targets=sets["train"].targets,
        test=sets["test"], test_targets=sets["test"].targets,
        val=val, val_targets=None if val is None else val.targets,
        class_names=list(inventory.class_names),
        info={**info, "counts": inventory.counts(), "locations": inventory.locations,
              "transforms": describe(options, transforms), "on_corrupt": options.on_corrupt,
              "problems": list(inventory.problems)},
    )


class SplitFolderBenchmark:
    """Base of the pre-split folder benchmarks: subclasses say where the tree is (`location`)."""

    Options: type = FolderSplitOptions
    title = "image folders"

    def __init__(self, options: FolderSplitOptions, data_root: Path | None) -> None:
        self.options = options
        self.data_root = data_root

    def folder(self) -> str:
        """The tree's folder as configured: relative to the data root, or absolute."""
        return self.options.folder  # type: ignore[attr-defined]

    def location(self) -> Path:
        return resolve_folder(self.folder(), self.data_root, self.title)

    def split_dirs(self) -> dict[str, str]:
        dirs = {"train": self.options.train_dir, "test": self.options.test_dir}
        if self.options.val_dir is not None:
            dirs["val"] = self.options.val_dir
        return dirs

    def inventory(self) -> Inventory:
        """The files of every split, listed without decoding (used by `load` and `sdlora data check`)."""
        return scan_split_folders(self.location(), self.split_dirs())

    def load(self) -> BenchmarkData:
        inventory = self.inventory()
        return checked_data(inventory, self.options, {"benchmark": self.title, "root": str(self.location())})


__all__ = [
    "CorruptImageError", "FileOptions", "FolderSplitOptions", "ImageFiles", "Inventory", "NamedFolderOptions",
    "OnCorrupt", "READ_ERRORS", "SplitFolderBenchmark", "build_splits", "checked_data", "class_folders",
    "open_rgb", "scan_split_folders", "verify_image",
]
