"""The data of a run grown by `sdlora learn`: new tasks read from files, and the scenario over old and new classes.

Labels follow the model's head: the classes the run *trained* (its class order cut at `sum(task_sizes)`; a run
cut down with `benchmark.num_tasks` never saw the rest), then each learned task's classes in sorted order. The
benchmark's untrained classes are left out of the old data, so a learned class may be one of them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import ConcatDataset, Dataset

from sdlora.config import RunConfig
from sdlora.data.base import BenchmarkData, ListDataset
from sdlora.data.scenario import RemappedSubset, Scenario, check_same_classes
from sdlora.engine import build
from sdlora.serving.learn_files import check_task_path

log = logging.getLogger("sdlora")


@dataclass
class NewTask:
    """The inputs (texts, or image paths) and label names of a new task's file or folder."""

    items: list[str]
    labels: list[str]
    kind: str  # "text" | "images": what a backbone's `modality` must be to take them


def fingerprint(path: Path | str) -> str:
    """sha256 of a file; of a folder, sha256 over its files' relative paths and sizes (cheap, catches edits)."""
    import hashlib

    from sdlora.data.download import sha256_file

    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(path)}:{p.stat().st_size}\n".encode())
    return h.hexdigest()


def read_text_task(path: Path, text_column: str, label_column: str) -> NewTask:
    """A CSV / TSV / JSON-lines file of (text, label) rows."""
    from sdlora.data.benchmarks.text_files import read_text_file

    return NewTask(*read_text_file(path, "auto", text_column, label_column,
                                   column_fix="choose them with --text-column / --label-column"), kind="text")


def read_image_task(path: Path, text_column: str, label_column: str) -> NewTask:
    """An image folder: one sub-folder per class (torchvision's ImageFolder layout), images below it."""
    from sdlora.data.image_folder import class_folders, image_files

    items, labels = [], []
    for name in class_folders(path):
        files = image_files(path / name)
        items += [str(p) for p in files]
        labels += [name] * len(files)
    if not items:
        raise ValueError(f"{path}: no images in class sub-folders (expected {path}/<class>/<image>)")
    return NewTask(items, labels, kind="images")


def read_task(path: Path, text_column: str = "text", label_column: str = "label") -> NewTask:
    """A new task's file (text rows) or folder (images), once `check_task_path` accepts it."""
    check_task_path(path)
    return (read_image_task if path.is_dir() else read_text_task)(path, text_column, label_column)


def task_dataset(task: NewTask, labels: np.ndarray, cfg: RunConfig, train: bool) -> Dataset:
    """Texts as they are; images through the run's own train / test transforms (`build.run_preprocess`) and its
    `on_corrupt` setting."""
    if task.kind == "text":
        return ListDataset(task.items, labels)
    from sdlora.data.image_folder import ImageFiles
    from sdlora.data.transforms import transforms_from_spec

    spec = build.run_preprocess(cfg)
    assert spec is not None, "an image task reaches only image backbones"
    transforms = transforms_from_spec(spec)
    on_corrupt = str(cfg.benchmark.options.get("on_corrupt", "stop"))
    return ImageFiles(list(zip(task.items, labels.tolist(), strict=True)),
                      transforms["train" if train else "test"], on_corrupt)


class GrowingScenario(Scenario):
    """A scenario over data already in label order, with explicit task sizes (the run's, then learned ones)."""

    def __init__(self, data: BenchmarkData, task_sizes: list[int]) -> None:
        super().__init__(data, list(range(data.num_classes)), data.num_classes, 1, 0, 1)
        self.task_sizes = list(task_sizes)
        self.bounds = np.concatenate([[0], np.cumsum(self.task_sizes)]).astype(int)


def _empty() -> tuple[Dataset, np.ndarray]:
    return ListDataset([], []), np.zeros(0, dtype=np.int64)


def original_part(cfg: RunConfig, base: dict[str, Any]) -> tuple[Sequence[Dataset], list[np.ndarray], bool]:
    """([train, test], [targets...]) of the run's trained classes in its class order, or empty when the
    benchmark's data cannot be read any more."""
    try:
        data = build.build_benchmark(cfg)
    except (OSError, ValueError) as err:
        log.warning("the run's benchmark data is not reachable (%s): old tasks are not re-evaluated", err)
        (train, t0), (test, t1) = _empty(), _empty()
        return [train, test], [t0, t1], False
    trained = np.asarray(base["class_order"][:sum(base["task_sizes"])], dtype=np.int64)
    if "class_names" in base:
        check_same_classes(base["class_names"][:len(trained)],
                           [data.class_names[c] for c in trained if c < data.num_classes], "the run's data")
    mapping = np.full(data.num_classes, -1, dtype=np.int64)
    mapping[trained] = np.arange(len(trained))
    parts = [RemappedSubset(base, np.flatnonzero(mapping[targets] >= 0), targets, mapping)
             for base, targets in ((data.train, data.train_targets), (data.test, data.test_targets))]
    return parts, [p.targets for p in parts], True


def combined_data(cfg: RunConfig, base: dict[str, Any], learned: list[dict[str, Any]],
                  new_train: NewTask | None) -> tuple[BenchmarkData, list[int]]:
    """The run's trained classes in order, then every learned task's classes; returns (data, task sizes).
    `new_train` is the training data of the last learned task (the one to train now)."""
    (train, test), (train_t, test_t), reachable = original_part(cfg, base)
    sizes = list(base["task_sizes"])
    names = list(base["class_names"])[:sum(sizes)]
    trains, tests, train_ts, test_ts = [train], [test], [train_t], [test_t]
    info: dict[str, Any] = {"original_reachable": reachable, "learned": [],
                            "benchmark_classes": len(base["class_names"])}  # of which the run trained sum(sizes)
    for i, entry in enumerate(learned):
        index = {name: len(names) + k for k, name in enumerate(entry["classes"])}
        names += entry["classes"]
        sizes.append(len(entry["classes"]))
        if i == len(learned) - 1 and new_train is not None:
            labels = np.asarray([index[label] for label in new_train.labels], dtype=np.int64)
            trains.append(task_dataset(new_train, labels, cfg, train=True))
            train_ts.append(labels)
        test_file = entry.get("test")
        reachable_test = bool(test_file and Path(test_file).exists())
        if reachable_test:
            assert test_file is not None  # reachable_test
            if entry.get("test_sha256") not in (None, fingerprint(test_file)):
                log.warning("%s changed since task %d was learned: its accuracy is over the file as it is now",
                            test_file, entry["task"] + 1)
            test_task = read_task(Path(test_file), entry["text_column"], entry["label_column"])
            unknown = sorted(set(test_task.labels) - set(index))
            if unknown:
                raise ValueError(f"{test_file}: labels {unknown[:10]} are not among the task's training classes")
            labels = np.asarray([index[label] for label in test_task.labels], dtype=np.int64)
            tests.append(task_dataset(test_task, labels, cfg, train=False))
            test_ts.append(labels)
        info["learned"].append({"task": entry["task"], "test_reachable": reachable_test})
    data = BenchmarkData(train=ConcatDataset(trains), train_targets=np.concatenate(train_ts),
                         test=ConcatDataset(tests), test_targets=np.concatenate(test_ts), class_names=names,
                         info={**base.get("data", {}), "learn": info})
    return data, sizes


def run_scenario(run: Any) -> Scenario:
    """The scenario of a run folder (`RunFolder`): the config's, grown by the tasks `learn` completed."""
    done = [t for t in run.learned if t["status"] == "complete"]
    if not done:
        scenario = build.build_scenario(run.cfg, build.build_benchmark(run.cfg), run.seed)
        check_same_classes(run.trained_classes, scenario.class_names(), "the run's data")
        return scenario
    data, sizes = combined_data(run.cfg, run.base, done, None)
    return GrowingScenario(data, sizes)
