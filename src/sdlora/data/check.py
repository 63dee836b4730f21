"""What `sdlora data check CONFIG` checks (the command is `sdlora.data_check`): are a benchmark's files what the
paper's splits need?

Counts classes and images per split against the known sizes (`KNOWN_COUNTS`, with their sources), lists
missing or extra class folders, and opens every image (PIL `verify()` plus a reduced decode), printing the
path of each missing or unreadable file. Returns non-zero when something is wrong. Reads only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TextIO

from tqdm.auto import tqdm

from sdlora.data.image_folder import READ_ERRORS, Inventory, verify_image

#: an approximate split size matches when every split is within this fraction of it
APPROX_TOLERANCE = 0.02
#: at most this many paths are printed per kind of problem
MAX_LISTED = 200


@dataclass(frozen=True)
class KnownSplit:
    """Images per split of one published layout; `exact=False`: sizes known only approximately."""

    name: str
    counts: dict[str, int]
    exact: bool = True
    source: str = ""

    def matches(self, found: dict[str, int]) -> bool:
        if self.exact:
            return all(found.get(s) == n for s, n in self.counts.items())
        return all(abs(found.get(s, 0) - n) <= APPROX_TOLERANCE * n for s, n in self.counts.items())


@dataclass(frozen=True)
class KnownCounts:
    """What a benchmark must have: classes, total images (train + test) and the known split layouts."""

    classes: int
    total: int | None
    layouts: tuple[KnownSplit, ...]
    source: str


KNOWN_COUNTS: dict[str, KnownCounts] = {
    "imagenet_r": KnownCounts(
        classes=200, total=30000,
        layouts=(KnownSplit("PILOT archive", {"train": 24000, "test": 6000}, exact=True,
                            source="Zhou et al. 2023 (RevisitingCIL / LAMDA-PILOT); SD-LoRA issue #7"),),
        source="Hendrycks et al., ICCV 2021: 30,000 renditions of 200 ImageNet classes",
    ),
    "imagenet_a": KnownCounts(
        classes=200, total=7500,
        layouts=(KnownSplit("PILOT archive (about 80/20)", {"train": 6000, "test": 1500}, exact=False,
                            source="LAMDA-PILOT archive (SD-LoRA issue #13); sizes unverified"),),
        source="Hendrycks et al., CVPR 2021: 7,500 natural adversarial images of 200 classes",
    ),
    "cub200": KnownCounts(
        classes=200, total=11788,
        layouts=(
            KnownSplit("official train_test_split.txt", {"train": 5994, "test": 5794}, exact=True,
                       source="Wah et al. 2011, CUB-200-2011"),
            KnownSplit("PILOT archive (about 80/20)", {"train": 9430, "test": 2358}, exact=False,
                       source="LAMDA-PILOT archive; exact sizes unverified"),
        ),
        source="Wah et al. 2011: CUB-200-2011, 11,788 images of 200 bird species",
    ),
    "cifar100": KnownCounts(
        classes=100, total=60000,
        layouts=(KnownSplit("torchvision", {"train": 50000, "test": 10000}, exact=True,
                            source="Krizhevsky 2009"),),
        source="Krizhevsky 2009: CIFAR-100, 100 classes, 600 images each",
    ),
}


@dataclass
class Report:
    """Lines go to `out` as they come; errors make the check fail, notes do not."""

    out: TextIO
    errors: int = 0

    def say(self, text: str) -> None:
        print(f"  {text}", file=self.out)

    def ok(self, text: str) -> None:
        self.say(f"ok: {text}")

    def note(self, text: str) -> None:
        self.say(f"note: {text}")

    def error(self, text: str) -> None:
        self.errors += 1
        self.say(f"ERROR: {text}")

    def listing(self, title: str, items: list[str]) -> None:
        """One error per item, at most MAX_LISTED printed."""
        if not items:
            return
        self.errors += len(items)
        self.say(f"ERROR: {title} ({len(items)}):")
        for item in items[:MAX_LISTED]:
            self.say(f"    {item}")
        if len(items) > MAX_LISTED:
            self.say(f"    ... and {len(items) - MAX_LISTED} more")


def verify_files(paths: Iterable[str], workers: int | None = None) -> list[tuple[str, str, bool]]:
    """Open every image; returns (path, reason, is_missing) for each failure, sorted by path."""
    paths = sorted(set(paths))

    def one(path: str) -> tuple[str, str, bool] | None:
        try:
            verify_image(path)
        except FileNotFoundError:
            return path, "no such file", True
        except READ_ERRORS as err:
            return path, f"{type(err).__name__}: {err}", False
        return None

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(tqdm(pool.map(one, paths, chunksize=64), total=len(paths), desc="verifying images",
                            file=sys.stderr, disable=None, leave=False))
    return [r for r in results if r is not None]


def compare_counts(known: KnownCounts | None, num_classes: int, counts: dict[str, int],
                   report: Report) -> None:
    """Classes, total images and split sizes against the known numbers."""
    if known is None:
        report.note("no published sizes for this benchmark; only files and classes are checked")
        return
    if num_classes == known.classes:
        report.ok(f"{num_classes} classes (expected {known.classes})")
    else:
        report.error(f"{num_classes} classes, expected {known.classes} ({known.source})")
    total = counts.get("train", 0) + counts.get("test", 0)
    if known.total is not None:
        if total == known.total:
            report.ok(f"{total:,} samples in train + test (expected {known.total:,})")
        else:
            report.error(f"{total:,} samples in train + test, expected {known.total:,} ({known.source})")
    found = " / ".join(f"{s} {counts.get(s, 0):,}" for s in ("train", "test"))
    for layout in known.layouts:
        if layout.matches(counts):
            approx = "" if layout.exact else " approximately"
            report.ok(f"split ({found}) matches{approx} the {layout.name} ({layout.source})")
            return
    expected = "; ".join(
        f"{lay.name}: " + " / ".join(f"{s} {n:,}" for s, n in lay.counts.items())
        + ("" if lay.exact else " (expected approximately)") for lay in known.layouts)
    if all(lay.exact for lay in known.layouts):
        report.error(f"split ({found}) matches no known layout ({expected})")
    else:
        report.note(f"split ({found}) differs from the known layouts ({expected})")


def check_inventory(inventory: Inventory, known: KnownCounts | None, report: Report) -> int:
    """Counts, problems and every file's readability of a benchmark of image files; returns its number of classes."""
    counts = inventory.counts()
    per_split_classes = inventory.classes_per_split()
    for split, n in counts.items():
        where = inventory.locations.get(split)
        report.say(f"{split}: {n:,} images in {per_split_classes[split]} classes  [{where}]")
    compare_counts(known, len(inventory.class_names), counts, report)
    report.listing("missing or unexpected class folders and list entries", inventory.problems)
    paths = [p for samples in inventory.splits.values() for p, _ in samples]
    report.say(f"opening {len(set(paths)):,} images ...")
    failures = verify_files(paths)
    report.listing("missing image files", [p for p, _, missing in failures if missing])
    report.listing("unreadable images", [f"{p}  ({why})" for p, why, missing in failures if not missing])
    if not failures:
        report.ok("every image opens")
    return len(inventory.class_names)


def check_loaded(bench: Any, known: KnownCounts | None, report: Report) -> int:
    """Benchmarks without image files (CIFAR-100 arrays, text): counts from the loaded targets; returns the number
    of classes."""
    load = getattr(bench, "load_local", bench.load)
    data = load()
    counts = {"train": len(data.train_targets), "test": len(data.test_targets)}
    for split in ("train", "test"):
        targets = getattr(data, f"{split}_targets")
        report.say(f"{split}: {counts[split]:,} samples in {len(set(targets.tolist()))} classes")
    compare_counts(known, data.num_classes, counts, report)
    return data.num_classes


__all__ = [
    "KNOWN_COUNTS", "KnownCounts", "KnownSplit", "Report", "check_inventory", "check_loaded", "compare_counts",
    "verify_files",
]
