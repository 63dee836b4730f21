"""CLINC150 (Larson et al., EMNLP 2019): 150 intents in 10 domains, in-scope queries of `data_full.json`.

Files under `<data_root>/clinc150/`: `data_full.json` (train 15,000 / val 3,000 / test 4,500, i.e.
100 / 20 / 30 per intent; the `oos_*` out-of-scope keys are not used) and `domains.json` (10 domains x 15
intents). Missing files are downloaded from the public repository clinc/oos-eval when online.
Labels index the intents sorted alphabetically; the named order `domain` lists the 10 domains in file
order, each domain's intents in file order (a task split of 15 then gives one domain per task).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from sdlora.data.base import DATA_ENV, BenchmarkData, ListDataset
from sdlora.data.benchmarks.options import Clinc150Options
from sdlora.data.download import DownloadError, download_file, sha256_file
from sdlora.registry import BENCHMARKS

FOLDER = "clinc150"
DATA_FILE = "data_full.json"
DOMAINS_FILE = "domains.json"
BASE_URL = "https://raw.githubusercontent.com/clinc/oos-eval/master/data"
DATA_SHA256 = "36923c3705a59e08fe9c3883d8bc2dd966ef93e22cb78ac41171782a698d56e0"
NUM_INTENTS = 150
NUM_DOMAINS = 10
PER_INTENT = {"train": 100, "val": 20, "test": 30}


class DataFileError(ValueError):
    """A data file exists but is not what the benchmark expects (checksum, counts, format)."""


def clinc_folder(data_root: Path | None) -> Path:
    if data_root is None:
        raise FileNotFoundError(
            f"clinc150: no data root; set benchmark.data_root in the config or the {DATA_ENV} environment "
            f"variable to the folder that holds {FOLDER}/{DATA_FILE}"
        )
    return Path(data_root).expanduser() / FOLDER


def ensure_files(folder: Path, download: bool) -> None:
    """Download the missing files (atomically, checksum-verified); without network, say where they go."""
    for name in (DATA_FILE, DOMAINS_FILE):
        path = folder / name
        if path.is_file():
            continue
        url = f"{BASE_URL}/{name}"
        reason = "downloading is off (benchmark.options.download: false)"
        if download:
            try:
                download_file(url, path, sha256=DATA_SHA256 if name == DATA_FILE else None)
                continue
            except DownloadError as err:
                reason = str(err)
        raise FileNotFoundError(
            f"clinc150: {path} not found and could not be downloaded ({reason}). Put the file at {path}; "
            f"get it from {url} (both {DATA_FILE} and {DOMAINS_FILE} belong in {folder})"
        )


def verify_sha256(path: Path, expected: str) -> str:
    actual = sha256_file(path)
    if actual != expected:
        raise DataFileError(
            f"clinc150: checksum mismatch for {path}: expected sha256 {expected}, actual {actual}. "
            f"The file is corrupt or another version; replace it with {BASE_URL}/{path.name} "
            f"(or set benchmark.options.verify_checksum: false to use it anyway)"
        )
    return actual


def check_counts(splits: dict[str, list[tuple[str, str]]], path: Path) -> list[str]:
    """Every split has the same 150 intents with 100 / 20 / 30 queries each; returns the sorted intents."""
    intents = sorted({intent for _, intent in splits["train"]})
    for split, per_intent in PER_INTENT.items():
        counts = Counter(intent for _, intent in splits[split])
        off = dict(list(((k, v) for k, v in counts.items() if v != per_intent))[:5])
        if len(counts) != NUM_INTENTS or sorted(counts) != intents or off:
            raise DataFileError(
                f"clinc150: {path} split {split!r} has {len(splits[split])} queries over "
                f"{len(counts)} intents (counts off: {off}); expected the same {NUM_INTENTS} intents "
                f"in every split, {per_intent} queries each"
            )
    return intents


def domain_order(domains: dict[str, list[str]], class_names: list[str], path: Path) -> list[int]:
    """Class ids grouped by domain: domains in file order, each domain's intents in file order."""
    index = {name: i for i, name in enumerate(class_names)}
    order = [index.get(intent, -1) for intent_list in domains.values() for intent in intent_list]
    if len(domains) != NUM_DOMAINS or sorted(order) != list(range(len(class_names))):
        raise DataFileError(
            f"clinc150: {path} must list {NUM_DOMAINS} domains covering the {len(class_names)} intents of "
            f"{DATA_FILE} once each; found {len(domains)} domains, {len(order)} entries"
        )
    return order


def first_per_class(items: list[tuple[str, str]], limit: int | None) -> list[tuple[str, str]]:
    """The first `limit` queries of each intent, in file order (a deterministic subset)."""
    if limit is None:
        return items
    seen: Counter[str] = Counter()
    kept = []
    for text, intent in items:
        if seen[intent] < limit:
            seen[intent] += 1
            kept.append((text, intent))
    return kept


def to_dataset(items: list[tuple[str, str]], index: dict[str, int]) -> tuple[ListDataset, np.ndarray]:
    dataset = ListDataset([text for text, _ in items], [index[intent] for _, intent in items])
    return dataset, dataset.labels


PUBLISHED_SPLIT = "Larson et al., EMNLP 2019: 150 intents x (100 train, 20 val, 30 test) in-scope queries"


@BENCHMARKS.register("clinc150")
class Clinc150:
    """CLINC150 intent classification: 150 intents, 10 domains; train / val / test (in-scope queries)."""

    Options = Clinc150Options

    def __init__(self, options: Clinc150Options, data_root: Path | None) -> None:
        self.options = options
        self.folder = clinc_folder(data_root)

    def expected_counts(self) -> Any:
        """The published in-scope sizes (100 train, 20 val, 30 test queries per intent), as the options select
        them (`max_per_class`, `include_val_in_train`): what `sdlora data check` compares with."""
        from sdlora.data.check import KnownCounts, KnownSplit

        cap = self.options.max_per_class or 10**9
        train = min(100, cap) + (min(20, cap) if self.options.include_val_in_train else 0)
        counts = {"train": 150 * train, "test": 150 * min(30, cap)}
        return KnownCounts(classes=150, total=counts["train"] + counts["test"],
                           layouts=(KnownSplit("data_full.json (in-scope)", counts, source=PUBLISHED_SPLIT),),
                           source=PUBLISHED_SPLIT)

    def load(self) -> BenchmarkData:
        opts = self.options
        ensure_files(self.folder, opts.download)
        data_path, domains_path = self.folder / DATA_FILE, self.folder / DOMAINS_FILE
        sha = verify_sha256(data_path, DATA_SHA256) if opts.verify_checksum else sha256_file(data_path)
        splits = read_splits(data_path)
        class_names = check_counts(splits, data_path)
        order = domain_order(read_json(domains_path), class_names, domains_path)
        index = {name: i for i, name in enumerate(class_names)}
        subset = {split: first_per_class(items, opts.max_per_class) for split, items in splits.items()}
        train_items = subset["train"] + (subset["val"] if opts.include_val_in_train else [])
        train, train_targets = to_dataset(train_items, index)
        test, test_targets = to_dataset(subset["test"], index)
        val, val_targets = (None, None) if opts.include_val_in_train else to_dataset(subset["val"], index)
        return BenchmarkData(
            train=train, train_targets=train_targets, test=test, test_targets=test_targets,
            val=val, val_targets=val_targets, class_names=class_names, class_orders={"domain": order},
            info={
                "name": "clinc150",
                "file": str(data_path),
                "sha256": sha,
                "checksum_verified": opts.verify_checksum,
                "counts": {"train": len(train), "val": 0 if val is None else len(val), "test": len(test)},
                "num_classes": len(class_names),
                "max_per_class": opts.max_per_class,
                "include_val_in_train": opts.include_val_in_train,
            },
        )


def read_splits(path: Path) -> dict[str, list[tuple[str, str]]]:
    """The in-scope splits of data_full.json as (text, intent) pairs."""
    raw = read_json(path)
    missing = [split for split in PER_INTENT if split not in raw]
    if missing:
        raise DataFileError(f"clinc150: {path} lacks the key(s) {missing}; found {sorted(raw)}")
    return {split: [(str(text), str(intent)) for text, intent in raw[split]] for split in PER_INTENT}


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataFileError(f"clinc150: {path} is not valid JSON ({err})") from err
