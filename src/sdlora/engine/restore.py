"""Rebuild a finished run's model from its folder (for `sdlora eval`, `export`, `predict` and `sdlora.load`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdlora.config import RunConfig
from sdlora.engine import build
from sdlora.engine.checkpoint import unprefixed
from sdlora.engine.run_folder import RunFolder, find_seed_folder
from sdlora.methods.base import Method

__all__ = ["RestoredRun", "find_seed_folder", "restore_run"]


@dataclass
class RestoredRun:
    cfg: RunConfig
    seed: int
    folder: Path
    method: Method
    tasks_done: int
    run: RunFolder


def check_weights(info: dict, record: dict, results_file: Path) -> None:
    """The rebuilt backbone must carry the weights the run was trained on (same sha256)."""
    recorded = record.get("backbone", {}).get("weights_sha256")
    if recorded and info.get("weights_sha256") and recorded != info["weights_sha256"]:
        raise ValueError(f"the backbone weights differ from the run's (sha256 {info['weights_sha256'][:12]}... "
                         f"vs {recorded[:12]}... in {results_file}); the pretrained weights changed")


def check_finished(run: RunFolder, meta: dict) -> None:
    """Only a finished run is restored: a checkpoint between two tasks of an interrupted `train` or `learn` holds a
    model of fewer classes than the run's, and before the first results.json no class names at all."""
    pending = run.pending
    if pending is not None:
        raise ValueError(f"{run.folder}: `sdlora learn` of task {pending['task'] + 1} did not complete; finish it with "
                         f"`sdlora learn {run.out} --resume`, or put the run back as it was with `--abandon`")
    if not meta["position"]["finished"] or run.record.get("status") != "complete":
        task, tasks = meta["position"]["task"] + 1, len(run.record.get("task_sizes", []))
        where = (f"the last checkpoint is in the middle of task {task}" if not meta["position"]["finished"] else
                 f"it stopped after task {task}" + (f" of {tasks}" if tasks else ""))
        raise ValueError(f"{run.folder}: the run is not finished ({where}); finish it first with `sdlora train "
                         f"{run.config_file} --out {run.out} --resume`")


def restore_run(run_dir: Path, seed: int | None = None, device: str = "cpu") -> RestoredRun:
    """The finished model of a run folder: `build.build_model` (seed, backbone, method) + its last checkpoint."""
    run = RunFolder.open(run_dir, seed)
    meta, tensors = run.checkpoint()
    check_finished(run, meta)
    method = build.build_model(run.cfg, run.seed, device)
    check_weights(method.backbone.info(), run.record, run.folder / "results.json")
    method.load_checkpoint_state(meta["method"], unprefixed(tensors, "method", device))
    method.to(device)
    return RestoredRun(run.cfg, run.seed, run.folder, method, meta["position"]["task"] + 1, run)
