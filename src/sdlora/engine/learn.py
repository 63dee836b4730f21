"""`sdlora learn RUN --data NEW_TRAIN [--test NEW_TEST]`: one more task of new classes for a finished run.

No old training data is read: the run's checkpoint carries the model, the new files the new classes (a
CSV / TSV / JSON-lines text file, or an image folder with one sub-folder per class).
The tasks learned this way are listed in `SEED/learned.json` (written before training, atomically), and
the scenario of the run grows by them: old classes keep their label ids, new classes follow in sorted order.
Old tasks' test files are re-evaluated when they can still be read; otherwise the new row of the accuracy
matrix carries their last measured accuracy (and sample count), and the task's `task_info` lists them under
`not_re_evaluated`. Every learned task needs a test file: the metrics weigh each task by its test samples.
An interrupted `learn` resumes by running it again with the same files (or `--resume`), like `train`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from sdlora.config import RunConfig
from sdlora.data.base import BenchmarkData, ListDataset
from sdlora.data.download import sha256_file
from sdlora.data.scenario import Scenario
from sdlora.engine import build
from sdlora.engine.checkpoint import load_checkpoint, write_json_atomic
from sdlora.engine.restore import find_seed_folder
from sdlora.engine.results import RunRecord
from sdlora.engine.trainer import Trainer
from sdlora.methods.base import Method

log = logging.getLogger("sdlora")

LEARNED = "learned.json"


@dataclass
class NewTask:
    """The inputs (texts, or image paths) and label names of a new task's file or folder."""

    items: list[str]
    labels: list[str]
    kind: str  # "text" | "images"


def read_text_task(path: Path, text_column: str, label_column: str) -> NewTask:
    """A CSV / TSV / JSON-lines file of (text, label) rows."""
    from sdlora.data.benchmarks.text_files import read_text_file

    return NewTask(*read_text_file(path, "auto", text_column, label_column), kind="text")


def read_image_task(path: Path, text_column: str, label_column: str) -> NewTask:
    """An image folder: one sub-folder per class (torchvision's ImageFolder layout), images below it."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    from sdlora.data.image_folder import class_folders

    items, labels = [], []
    for name in class_folders(path):
        files = sorted(p for p in (path / name).rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
        items += [str(p) for p in files]
        labels += [name] * len(files)
    if not items:
        raise ValueError(f"{path}: no images in class sub-folders (expected {path}/<class>/<image>)")
    return NewTask(items, labels, kind="images")


#: what a path is -> its reader
TASK_READERS = {"folder": read_image_task, "file": read_text_task}
#: backbone (config name) -> the inputs it takes
BACKBONE_INPUTS = {"hf_encoder": "text", "timm_vit": "images"}


def read_task(path: Path, text_column: str = "text", label_column: str = "label") -> NewTask:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    return TASK_READERS["folder" if path.is_dir() else "file"](path, text_column, label_column)


def task_dataset(task: NewTask, labels: np.ndarray, cfg: RunConfig, train: bool) -> Dataset:
    """Texts as they are; images through the run's train / eval transforms."""
    if task.kind == "text":
        return ListDataset(task.items, labels)
    from sdlora.data.image_folder import ImageFiles
    from sdlora.data.transforms import eval_transform, train_transform

    options = cfg.benchmark.options
    size = options.get("image_size") or cfg.backbone.options.get("model_kwargs", {}).get("img_size") or 224
    make = train_transform if train else eval_transform
    return ImageFiles(list(zip(task.items, labels.tolist(), strict=True)), make(int(size), options.get("normalize",
                                                                                                       "none")))


class Relabeled(Dataset):
    """`base` with labels mapped through `mapping` (original label -> position in the run's class order)."""

    def __init__(self, base: Dataset, mapping: np.ndarray) -> None:
        self.base, self.mapping = base, mapping

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, int]:
        item, label = self.base[i]
        return item, int(self.mapping[label])


class GrowingScenario(Scenario):
    """A scenario over data already in class order, with explicit task sizes (the run's, then learned ones)."""

    def __init__(self, data: BenchmarkData, task_sizes: list[int]) -> None:
        super().__init__(data, list(range(data.num_classes)), data.num_classes, 1, 0, 1)
        self.task_sizes = list(task_sizes)
        self.bounds = np.concatenate([[0], np.cumsum(self.task_sizes)]).astype(int)


def _empty() -> tuple[Dataset, np.ndarray]:
    return ListDataset([], []), np.zeros(0, dtype=np.int64)


def original_part(cfg: RunConfig, base: dict[str, Any]) -> tuple[list[Dataset], list[np.ndarray], bool]:
    """([train, test], [targets...]) of the run's own benchmark in its class order, or empty when unreachable."""
    try:
        data = build.build_benchmark(cfg)
    except (OSError, ValueError) as err:
        log.warning("the run's benchmark data is not reachable (%s): old tasks are not re-evaluated", err)
        (train, t0), (test, t1) = _empty(), _empty()
        return [train, test], [t0, t1], False
    mapping = np.full(data.num_classes, -1, dtype=np.int64)
    mapping[np.asarray(base["class_order"])] = np.arange(len(base["class_order"]))
    parts = [Relabeled(data.train, mapping), Relabeled(data.test, mapping)]
    return parts, [mapping[data.train_targets], mapping[data.test_targets]], True


def combined_data(cfg: RunConfig, base: dict[str, Any], learned: list[dict[str, Any]],
                  new_train: NewTask | None, data_info: dict[str, Any]) -> tuple[BenchmarkData, list[int]]:
    """The run's classes in order, then every learned task's classes; returns (data, task sizes)."""
    (train, test), (train_t, test_t), reachable = original_part(cfg, base)
    names, sizes = list(base["class_names"]), list(base["task_sizes"])
    trains, tests, train_ts, test_ts = [train], [test], [train_t], [test_t]
    info: dict[str, Any] = {"original_reachable": reachable, "learned": []}
    for i, entry in enumerate(learned):
        index = {name: len(names) + k for k, name in enumerate(entry["classes"])}
        names += entry["classes"]
        sizes.append(len(entry["classes"]))
        last = i == len(learned) - 1
        if last and new_train is not None:
            labels = np.asarray([index[label] for label in new_train.labels], dtype=np.int64)
            trains.append(task_dataset(new_train, labels, cfg, train=True))
            train_ts.append(labels)
        test_file = entry.get("test")
        if test_file and Path(test_file).exists():
            test_task = read_task(Path(test_file), entry["text_column"], entry["label_column"])
            unknown = sorted(set(test_task.labels) - set(index))
            if unknown:
                raise ValueError(f"{test_file}: labels {unknown[:10]} are not among the task's training classes")
            labels = np.asarray([index[label] for label in test_task.labels], dtype=np.int64)
            tests.append(task_dataset(test_task, labels, cfg, train=False))
            test_ts.append(labels)
        info["learned"].append({"task": entry["task"], "test_reachable": bool(test_file and Path(test_file).exists())})
    data = BenchmarkData(train=ConcatDataset(trains), train_targets=np.concatenate(train_ts),
                         test=ConcatDataset(tests), test_targets=np.concatenate(test_ts), class_names=names,
                         info={**data_info, "learn": info})
    return data, sizes


class LearnRecord(RunRecord):
    """A run record whose new rows carry the last measured accuracy of old tasks that had no test data now."""

    def add_task(self, row: list[float], counts: list[int], trainable: int, seconds: float,
                 info: dict[str, Any]) -> None:
        row, counts = list(row), list(counts)
        before, previous = self.task_test_counts, self.accuracy_matrix[-1] if self.accuracy_matrix else []
        stale = [j for j, n in enumerate(counts) if n == 0 and j < len(previous) and before[j] > 0]
        for j in stale:
            row[j], counts[j] = previous[j], before[j]
        if any(n == 0 for n in counts):
            raise ValueError(f"task(s) {[j + 1 for j, n in enumerate(counts) if n == 0]} have no test samples")
        super().add_task(row, counts, trainable, seconds, {**info, "not_re_evaluated": stale})


class LearnTrainer(Trainer):
    """The run's trainer over a given (grown) scenario."""

    def __init__(self, cfg: RunConfig, seed: int, out_dir: Path, device: torch.device, data: BenchmarkData,
                 scenario: Scenario, quiet: bool = True) -> None:
        from sdlora.engine.seeding import seed_everything

        self.cfg, self.seed, self.out_dir, self.device = cfg, seed, Path(out_dir), device
        self.quiet, self.on_checkpoint = quiet, None
        seed_everything(seed, cfg.deterministic)
        self.scenario = scenario
        self.backbone = build.build_backbone(cfg).to(device)
        self.method: Method = build.build_method(cfg, self.backbone).to(device)
        self.record = LearnRecord.start(cfg, seed, scenario, self.backbone.info(), data.info)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.counter = 0


def read_learned(folder: Path, record: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the run as trained: class order, names, task sizes; the learned tasks) from learned.json."""
    path = folder / LEARNED
    if path.is_file():
        data = json.loads(path.read_text())
        return data["base"], data["tasks"]
    return {k: record[k] for k in ("class_order", "class_names", "task_sizes", "data")}, []


def fingerprint(path: Path | str) -> str:
    """sha256 of a file; of a folder, sha256 over its files' relative paths and sizes (cheap, catches edits)."""
    import hashlib

    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(path)}:{p.stat().st_size}\n".encode())
    return h.hexdigest()


def _file_facts(path: Path | None) -> str | None:
    return None if path is None else str(path.resolve())


def learn(run_dir: Path, train_file: Path | None, test_file: Path | None, *, seed: int | None = None,
          device: str = "cpu", text_column: str = "text", label_column: str = "label",
          quiet: bool = True, on_checkpoint: Any = None) -> dict[str, Any]:
    """Add one task of new classes from `train_file` (text file or image folder), or resume an interrupted one;
    returns the new results.json."""
    folder = find_seed_folder(Path(run_dir), seed)
    loaded = load_checkpoint(folder / "checkpoints")
    if loaded is None:
        raise FileNotFoundError(f"{folder / 'checkpoints'} has no checkpoint")
    record = json.loads((folder / "results.json").read_text())
    base, learned = read_learned(folder, record)
    cfg = _run_config(folder)
    if cfg.eval_split != "test":
        raise ValueError(f"{folder} was evaluated on the {cfg.eval_split!r} split; learn evaluates on test files, "
                         "so it continues runs with eval_split: test only")
    pending = learned[-1] if learned and learned[-1]["status"] != "complete" else None
    if pending is None:
        if not loaded[0]["position"]["finished"] or record.get("status") != "complete":
            raise ValueError(f"{folder}: the run is not finished; finish it with `sdlora train ... --resume` first")
        if train_file is None or test_file is None:
            raise ValueError("nothing to resume: give the new task's training and test files (--data, --test)")
        new = read_task(train_file, text_column, label_column)
        takes = BACKBONE_INPUTS.get(record["config"]["backbone"]["name"], new.kind)
        if new.kind != takes:
            raise ValueError(f"{train_file} holds {new.kind} but this run's backbone takes {takes}")
        classes = sorted(set(new.labels))
        known = sorted(set(classes) & set(record["class_names"]))
        if known:
            raise ValueError(f"the model already knows class(es) {known[:10]}; a new task must bring new classes "
                             f"only (known: {len(record['class_names'])} classes)")
        entry = {"task": len(record["accuracy_matrix"]), "train": _file_facts(train_file),
                 "test": _file_facts(test_file), "sha256": fingerprint(train_file), "classes": classes,
                 "text_column": text_column, "label_column": label_column, "status": "running"}
        test = read_task(test_file, text_column, label_column)
        unknown = sorted(set(test.labels) - set(classes))
        if test.kind != new.kind or unknown:
            raise ValueError(f"--test {test_file}: " + (f"labels {unknown[:10]} are not among the new training "
                             f"classes {classes[:10]}" if unknown else f"holds {test.kind}, --data holds {new.kind}"))
        learned = [*learned, entry]
        write_json_atomic(folder / LEARNED, {"base": base, "tasks": learned})
    else:
        if train_file is not None and _file_facts(train_file) != pending["train"]:
            raise ValueError(f"task {pending['task'] + 1} from {pending['train']} was interrupted; resume it first "
                             f"(`sdlora learn {run_dir} --resume`)")
        if fingerprint(pending["train"]) != pending["sha256"]:
            raise ValueError(f"{pending['train']} changed since task {pending['task'] + 1} started")
        new = read_task(Path(pending["train"]), pending["text_column"], pending["label_column"])
        entry = pending
    data, sizes = combined_data(cfg, base, learned, new, base.get("data", record.get("data", {})))
    scenario = GrowingScenario(data, sizes)
    from sdlora.engine.runner import pick_device

    trainer = LearnTrainer(cfg, record["seed"], folder, pick_device(device), data, scenario, quiet=quiet)
    trainer.on_checkpoint = on_checkpoint
    result = trainer.run(resume=True)
    entry["status"] = "complete"
    write_json_atomic(folder / LEARNED, {"base": base, "tasks": learned})
    return result


def _run_config(folder: Path) -> RunConfig:
    import yaml

    from sdlora.config import load_config

    config_file = next(p / "config.yaml" for p in (folder, folder.parent) if (p / "config.yaml").is_file())
    return load_config(data=yaml.safe_load(config_file.read_text()), source=str(config_file))


def run_scenario(folder: Path, cfg: RunConfig, seed: int) -> Scenario:
    """The scenario of a run folder: the config's, grown by the tasks `learn` completed (for `sdlora eval`)."""
    results = folder / "results.json"
    record = json.loads(results.read_text()) if results.is_file() else {}
    base, learned = read_learned(folder, record) if record else ({}, [])
    done = [t for t in learned if t["status"] == "complete"]
    if not done:
        return build.build_scenario(cfg, build.build_benchmark(cfg), seed)
    data, sizes = combined_data(cfg, base, done, None, base.get("data", {}))
    return GrowingScenario(data, sizes)
