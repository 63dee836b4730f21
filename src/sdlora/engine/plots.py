"""PNG plots of a run and of a comparison; matplotlib's object API with the Agg canvas (no pyplot state)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sdlora.engine.metrics import run_curve, summarize_runs

ANNOTATE_MAX_TASKS = 20


def _figure(size: tuple[float, float]) -> Figure:
    figure = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # atomic: a kill never leaves half a PNG
    figure.savefig(tmp, dpi=120)
    os.replace(tmp, path)


def _title(results: dict) -> str:
    method, benchmark, seed = (results.get(k, "?") for k in ("method", "benchmark", "seed"))
    return f"{method} on {benchmark} (seed {seed})"


def plot_accuracy_curve(results: dict, path: str | Path) -> None:
    """Sample-weighted accuracy over all seen classes after each task."""
    curve = run_curve(results)
    tasks = np.arange(1, len(curve) + 1)
    shown = [(t, a) for t, a in zip(tasks, curve, strict=True) if a is not None]  # `eval_every` skips rows
    figure = _figure((6, 4))
    ax = figure.add_subplot()
    ax.plot([t for t, _ in shown], [a for _, a in shown], marker="o")
    ax.set_xlabel("task")
    ax.set_ylabel("accuracy on seen classes (%)")
    ax.set_xticks(tasks)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(_title(results))
    _save(figure, path)


def plot_accuracy_matrix(results: dict, path: str | Path) -> None:
    """Heatmap of a[i][j] (row: after training task i, column: test task j); values shown up to 20 tasks."""
    matrix = results["accuracy_matrix"]
    size = len(matrix)
    grid = np.full((size, size), np.nan)
    for i, row in enumerate(matrix):
        if row is not None:  # not evaluated after task i (`eval_every`): an empty row
            grid[i, : len(row)] = row
    figure = _figure((1.2 + 0.45 * max(size, 6), 0.8 + 0.4 * max(size, 6)))
    ax = figure.add_subplot()
    image = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis")
    figure.colorbar(image, ax=ax, label="accuracy (%)")
    ticks = np.arange(size)
    ax.set_xticks(ticks, [str(t + 1) for t in ticks])
    ax.set_yticks(ticks, [str(t + 1) for t in ticks])
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("after training task")
    if size <= ANNOTATE_MAX_TASKS:
        for i, row in enumerate(matrix):
            for j, value in enumerate(row or []):
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7,
                        color="black" if value > 60 else "white")
    ax.set_title(_title(results))
    _save(figure, path)


def plot_curves(groups: dict[str, list[dict]], path: str | Path) -> None:
    """One line per method label: the accuracy curve's mean over seeds, with a +-1 stderr band."""
    figure = _figure((7, 4.5))
    ax = figure.add_subplot()
    for label, runs in groups.items():
        curve = summarize_runs(runs)["accuracy_curve"]
        mean, stderr = (np.array(curve[k], dtype=float) for k in ("mean", "stderr"))  # None (not evaluated): NaN
        tasks = np.arange(1, len(mean) + 1)
        line = ax.plot(tasks, mean, marker="o", markersize=3, label=f"{label} (n={len(runs)})")[0]
        ax.fill_between(tasks, mean - stderr, mean + stderr, color=line.get_color(), alpha=0.2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("task")
    ax.set_ylabel("accuracy on seen classes (%), mean ± stderr")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(figure, path)
