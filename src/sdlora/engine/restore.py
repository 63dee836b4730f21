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


def restore_run(run_dir: Path, seed: int | None = None, device: str = "cpu") -> RestoredRun:
    """The finished model of a run folder: `build.build_model` (seed, backbone, method) + its last checkpoint."""
    run = RunFolder.open(run_dir, seed)
    meta, tensors = run.checkpoint()
    if not meta["position"]["finished"]:
        raise ValueError(f"{run.folder}: the last checkpoint is in the middle of task {meta['position']['task'] + 1}; "
                         + ("finish it with `sdlora learn ... --resume` (or --abandon) first" if run.pending else
                            "finish the run with `sdlora train ... --resume` first"))
    method = build.build_model(run.cfg, run.seed, device)
    check_weights(method.backbone.info(), run.record, run.folder / "results.json")
    method.load_checkpoint_state(meta["method"], unprefixed(tensors, "method", device))
    method.to(device)
    return RestoredRun(run.cfg, run.seed, run.folder, method, meta["position"]["task"] + 1, run)
