"""One reader of a run's seed folder: its config, results, checkpoint and the tasks `sdlora learn` added.

Opening a folder and reading its config, results and learned tasks imports no torch (the command line's early
checks of `sdlora learn` use it); only the checkpoint's tensors need it.

A seed folder (`OUT/seed-N/`) holds results.json, checkpoints/, and learned.json once `learn` ran; config.yaml
lies beside it in OUT (or in the folder itself). What the model was *trained* on is not the benchmark's class
list: a run cut down with `benchmark.num_tasks` trained only the first `sum(task_sizes)` classes of its order,
and every learned task appends its own classes after those.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdlora.config import RunConfig, load_saved_config
from sdlora.engine.seed_folder import find_seed_folder

if TYPE_CHECKING:
    import torch

LEARNED = "learned.json"


@dataclass
class RunFolder:
    """A seed folder, read once: `cfg` (config.yaml), `record` (results.json, {} before the first task)."""

    folder: Path
    cfg: RunConfig
    config_file: Path
    record: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, run_dir: Path | str, seed: int | None = None) -> RunFolder:
        folder = find_seed_folder(Path(run_dir), seed)
        config_file = next((p / "config.yaml" for p in (folder, folder.parent) if (p / "config.yaml").is_file()),
                           None)
        if config_file is None:
            raise FileNotFoundError(f"no config.yaml next to {folder}")
        cfg = load_saved_config(config_file)
        results = folder / "results.json"
        record = json.loads(results.read_text()) if results.is_file() else {}
        return cls(folder, cfg, config_file, record)

    @property
    def out(self) -> Path:
        """The run folder that holds this seed (where config.yaml, summary.json and the lock live)."""
        return self.config_file.parent

    @property
    def seed(self) -> int:
        if "seed" in self.record:
            return int(self.record["seed"])
        name = self.folder.name
        return int(name.split("-", 1)[1]) if name.startswith("seed-") else self.cfg.seeds[0]

    def checkpoint(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        from sdlora.engine.checkpoint import load_checkpoint  # torch: the reading above runs without it

        loaded = load_checkpoint(self.folder / "checkpoints")
        if loaded is None:
            raise FileNotFoundError(f"{self.folder / 'checkpoints'} has no checkpoint")
        return loaded

    def checkpoint_meta(self) -> dict[str, Any]:
        """The last checkpoint's metadata (position, counter) without loading its tensors."""
        from sdlora.engine.checkpoint import latest_meta

        meta = latest_meta(self.folder / "checkpoints")
        if meta is None:
            raise FileNotFoundError(f"{self.folder / 'checkpoints'} has no checkpoint")
        return meta

    # -- learned tasks -----------------------------------------------------------------------------
    def learned_file(self) -> dict[str, Any]:
        """learned.json: {"base": the run as trained, "tasks": [learned task entries]}; the record's own facts
        when `learn` never ran."""
        path = self.folder / LEARNED
        if path.is_file():
            return json.loads(path.read_text())
        base = {k: self.record[k] for k in ("class_order", "class_names", "task_sizes", "data") if k in self.record}
        return {"base": base, "tasks": []}

    @property
    def base(self) -> dict[str, Any]:
        """The run as `train` left it: class_order and class_names (the benchmark's, in order), task_sizes."""
        return self.learned_file()["base"]

    @property
    def learned(self) -> list[dict[str, Any]]:
        return self.learned_file()["tasks"]

    @property
    def pending(self) -> dict[str, Any] | None:
        """The learned task that started and did not complete, if any."""
        tasks = self.learned
        return tasks[-1] if tasks and tasks[-1]["status"] != "complete" else None

    @property
    def trained_classes(self) -> list[str]:
        """The classes the model was trained on, in label order: the run's trained part of its class order,
        then every completed learned task's classes."""
        base = self.base
        names = list(base.get("class_names", []))[:sum(base.get("task_sizes", []))]
        for task in self.learned:
            if task["status"] == "complete":
                names += task["classes"]
        return names


__all__ = ["LEARNED", "RunFolder", "find_seed_folder"]
