"""`sdlora eval RUN [--per-class [DIR]]`: a finished (or grown) run re-evaluated on every class it knows.

With `--per-class`, also what Avalanche users call the per-class stream: per-class accuracy (`per_class.csv`:
class, task, samples, correct, accuracy) and the confusion matrix over the known classes (`confusion.csv`, rows =
true class, columns = predicted class, and `confusion.png`), from the same predictions as the accuracy.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np

from sdlora.data.length_order import pass_loader
from sdlora.engine.loop import predictions
from sdlora.engine.restore import restore_run
from sdlora.serving.learn_data import run_scenario

log = logging.getLogger("sdlora")


def evaluate_run(run_dir: Path, seed: int | None = None, split: str = "test", device: str = "cpu",
                 per_class: str | Path | None = None) -> dict[str, Any]:
    """{"run", "split", "tasks", "accuracy", "per_task"} (percent); with `per_class` (a folder, or "" for
    SEED/per_class_SPLIT) the per-class files too, and "per_class": the folder."""
    run = restore_run(Path(run_dir), seed, device)
    scenario = run_scenario(run.run)  # grown by `sdlora learn`, if it ran
    task = scenario.task(run.tasks_done - 1)
    backbone = run.method.backbone
    loader = pass_loader(scenario.eval_set(task.index, split), backbone.collate, run.cfg.train.eval_batch_size,
                         backbone.sample_lengths if run.cfg.train.length_aware_passes else None)
    pairs = list(predictions(run.method, loader, next(run.method.parameters()).device, "none", task.total))
    predicted = np.concatenate([p for p, _ in pairs]) if pairs else np.zeros(0, dtype=np.int64)
    true = np.concatenate([t for _, t in pairs]) if pairs else np.zeros(0, dtype=np.int64)
    confusion = np.bincount(true * task.total + predicted, minlength=task.total ** 2).reshape(task.total, task.total)
    owner = scenario.task_of_label(np.arange(task.total))
    correct, samples = np.diag(confusion), confusion.sum(1)  # per true class
    counts = [int(samples[owner == k].sum()) for k in range(task.index + 1)]
    per_task = [round(100.0 * correct[owner == k].sum() / n, 4) if n else None for k, n in enumerate(counts)]
    result = {"run": str(run.folder), "split": split, "tasks": run.tasks_done,
              "accuracy": round(100.0 * np.trace(confusion) / confusion.sum(), 4) if confusion.sum() else None,
              "per_task": per_task}
    missing = [k + 1 for k, n in enumerate(counts) if not n]
    if missing:  # a learned task's test file gone, or the run's benchmark data unreachable
        result["not_evaluated"] = missing
        log.warning("tasks %s have no %s data to read any more: per_task holds null for them, and accuracy covers "
                    "the other tasks only", missing, split)
    if per_class is not None:
        folder = Path(per_class) if str(per_class) else run.folder / f"per_class_{split}"
        write_per_class(folder, scenario.class_names(task.total), owner, confusion)
        result["per_class"] = str(folder)
    return result


def write_per_class(folder: Path, names: list[str], owner: np.ndarray, confusion: np.ndarray) -> None:
    """per_class.csv, confusion.csv and confusion.png in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    samples, correct = confusion.sum(1), np.diag(confusion)
    with (folder / "per_class.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "task", "samples", "correct", "accuracy"])
        for c, name in enumerate(names):
            accuracy = f"{100.0 * correct[c] / samples[c]:.4f}" if samples[c] else ""
            writer.writerow([name, int(owner[c]) + 1, int(samples[c]), int(correct[c]), accuracy])
    with (folder / "confusion.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true \\ predicted", *names])
        for name, row in zip(names, confusion.tolist(), strict=True):
            writer.writerow([name, *row])
    plot_confusion(confusion, names, folder / "confusion.png")


def plot_confusion(confusion: np.ndarray, names: list[str], path: Path) -> None:
    """The row-normalised confusion matrix (each true class sums to 1); class names shown up to 40 classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    size = min(4 + 0.25 * len(names), 24)
    figure, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(rates, vmin=0, vmax=1, cmap="viridis")
    figure.colorbar(image, ax=ax, label="share of the true class")
    if len(names) <= 40:
        ticks = np.arange(len(names))
        ax.set_xticks(ticks, names, rotation=90, fontsize=7)
        ax.set_yticks(ticks, names, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
