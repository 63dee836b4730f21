"""HWU64 (Liu et al., IWSDS 2019): 64 home-assistant intents, fold 1 of the authors' 10-fold split.

Files under `<data_root>/hwu64/`: `train.csv` (9,960 rows) and `test.csv` (1,076 rows), columns `text,label`
(placed by hand; never downloaded). Labels index the intents sorted alphabetically. The data has no validation
split: `val_fraction` of every intent's train rows (rounded, at least one) is held out as `val`, chosen by a
fixed permutation (`split_seed`, independent of the run's seed), so every run and class order sees the same
split. `val_fraction: 0` trains on all of train.csv and exposes no `val` split.

Named class order `scenario`: the intents grouped by their scenario (the name before the first `_`, e.g. `alarm`
in `alarm_query`), scenarios alphabetical, so a task holds one or two home-assistant scenarios instead of a mix.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from sdlora.data.base import DATA_ENV, BenchmarkData, ListDataset
from sdlora.data.benchmarks.options import Hwu64Options
from sdlora.data.benchmarks.text_files import TextFileError, read_text_file
from sdlora.data.download import sha256_file
from sdlora.registry import BENCHMARKS

FOLDER = "hwu64"
FILES = {"train": "train.csv", "test": "test.csv"}
SHA256 = {"train": "d6bf3228741464c2dfb7b012ec8537b9182b9f4245c063fcccb96e8318e16f24",
          "test": "cfd3e8dd9eee92ab506bc94f33460b5ada8496a05587a483907e31e5d1b37610"}
NUM_INTENTS = 64
ROWS = {"train": 9960, "test": 1076}  # fold 1 as published (Liu et al., IWSDS 2019); the sha256 pins the files
SOURCE = "HWU64 fold 1 (Liu et al., IWSDS 2019): train.csv 9,960 rows, test.csv 1,076"


def scenario_order(class_names: list[str]) -> list[int]:
    """Class ids grouped by scenario (the prefix before the first `_`), scenarios and intents alphabetical."""
    return sorted(range(len(class_names)), key=lambda i: (class_names[i].split("_", 1)[0], class_names[i]))


def held_per_class(rows: int, fraction: float) -> int:
    """How many of a class's `rows` are held out: round(fraction * rows), at least one, never all of them."""
    return min(max(1, round(fraction * rows)), rows - 1)


def hold_out(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A boolean mask over `labels`: per class, round(fraction * n) rows (at least one when fraction > 0, never
    all of them), drawn by one fixed permutation of `seed`."""
    mask = np.zeros(labels.shape[0], dtype=bool)
    if fraction == 0:
        return mask
    order = np.random.default_rng(seed).permutation(labels.shape[0])
    for c in np.unique(labels):
        rows = order[labels[order] == c]
        take = held_per_class(rows.shape[0], fraction)
        mask[rows[:take]] = True
    return mask


@BENCHMARKS.register("hwu64")
class Hwu64:
    """HWU64 intent classification: 64 intents; train (minus a held-out `val`), val, test."""

    Options = Hwu64Options

    def __init__(self, options: Hwu64Options, data_root: Path | None) -> None:
        if data_root is None:
            raise FileNotFoundError(f"hwu64: no data root; set benchmark.data_root in the config or the {DATA_ENV} "
                                    f"environment variable to the folder that holds {FOLDER}/train.csv")
        self.options = options
        self.folder = Path(data_root).expanduser() / FOLDER

    def expected_counts(self) -> Any:
        """Fold 1's sizes less the `val` rows held out of train.csv (`val_fraction` of every intent, counted on the
        file's labels as `load` holds them out): what `sdlora data check` compares with."""
        from sdlora.data.check import KnownCounts, KnownSplit

        held = 0
        train_file = self.folder / FILES["train"]
        if self.options.val_fraction and train_file.is_file():
            _, names = read_text_file(train_file, "csv", "text", "label")
            held = sum(held_per_class(rows, self.options.val_fraction) for rows in Counter(names).values())
        counts = {"train": ROWS["train"] - held, "test": ROWS["test"]}
        layout = KnownSplit(f"fold 1, {held:,} train.csv rows held out as val", counts, source=SOURCE)
        return KnownCounts(classes=NUM_INTENTS, total=counts["train"] + counts["test"], layouts=(layout,),
                           source=SOURCE)

    def load(self) -> BenchmarkData:
        opts = self.options
        paths = {split: self.folder / name for split, name in FILES.items()}
        sha = {split: sha256_file(path) if path.is_file() else None for split, path in paths.items()}
        for split, path in paths.items():
            if not path.is_file():
                raise FileNotFoundError(f"hwu64: {path} not found; place the HWU64 fold-1 files {FILES['train']} "
                                        f"and {FILES['test']} in {self.folder} (never downloaded)")
            if opts.verify_checksum and sha[split] != SHA256[split]:
                raise TextFileError(f"hwu64: checksum mismatch for {path}: expected sha256 {SHA256[split]}, actual "
                                    f"{sha[split]} (set benchmark.options.verify_checksum: false to use it anyway)")
        rows = {split: read_text_file(path, "csv", "text", "label") for split, path in paths.items()}
        class_names = sorted(set(rows["train"][1]))
        if len(class_names) != NUM_INTENTS or not set(rows["test"][1]) <= set(class_names):
            raise TextFileError(f"hwu64: {paths['train']} has {len(class_names)} intents (expected {NUM_INTENTS}) "
                                f"or {paths['test']} has intents absent from it")
        index = {name: i for i, name in enumerate(class_names)}
        labels = {split: np.asarray([index[name] for name in names], dtype=np.int64)
                  for split, (_, names) in rows.items()}
        held = hold_out(labels["train"], opts.val_fraction, opts.split_seed)
        texts = rows["train"][0]
        train = ListDataset([t for t, h in zip(texts, held, strict=True) if not h], labels["train"][~held])
        val = ListDataset([t for t, h in zip(texts, held, strict=True) if h], labels["train"][held]) \
            if held.any() else None
        test = ListDataset(rows["test"][0], labels["test"])
        return BenchmarkData(
            train=train, train_targets=train.labels, test=test, test_targets=test.labels,
            val=val, val_targets=None if val is None else val.labels, class_names=class_names,
            class_orders={"scenario": scenario_order(class_names)},
            info={
                "name": "hwu64",
                "files": {split: str(path) for split, path in paths.items()},
                "sha256": sha,
                "checksum_verified": opts.verify_checksum,
                "counts": {"train": len(train), "val": 0 if val is None else len(val), "test": len(test)},
                "num_classes": len(class_names),
                "val_fraction": opts.val_fraction,
                "split_seed": opts.split_seed,
            },
        )
