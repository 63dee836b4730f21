"""Scalar loggers (Avalanche style: one interface, several back-ends), kept apart from the metrics.

The trainer reports scalars (per step: loss, lr; per epoch: mean loss, lr and the method's named scalars,
e.g. SD-LoRA's magnitudes) to every logger named in `train.loggers`:

* `csv`: `scalars.csv` beside results.json, one row per value (step, task, epoch, name, value): a fixed
  set of columns whatever the method reports; on resume the rows after the checkpoint are dropped, so the
  file ends as an uninterrupted run's would.
* `tensorboard`: event files in `tensorboard/` (needs `pip install 'sdlora[tensorboard]'`).
* `wandb`: Weights & Biases (needs `pip install 'sdlora[wandb]'`); `WANDB_MODE=offline` keeps the run
  local (`wandb sync` uploads it later), and so does `HF_HUB_OFFLINE=1`/no network if you set that mode.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdlora.registry import Registry
from sdlora.typed import ConfigError

LOGGERS: Registry[Any] = Registry("logger")


@dataclass
class Resume:
    """Where the checkpoint that a run resumes from left the logs: the step, and each logger's position."""

    step: int
    positions: dict[str, int]


class ScalarLogger:
    """The interface: `log` named scalars at a global step (with the task and epoch); `close` at the end."""

    #: the package a logger needs and the pip extra that installs it (None: nothing beyond sdlora)
    requires: tuple[str, str] | None = None

    def __init__(self, folder: Path, run_name: str, config: dict[str, Any], resume: Resume | None) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def log(self, step: int, task: int, epoch: int, scalars: dict[str, float]) -> None:
        raise NotImplementedError

    def position(self) -> int | None:
        """Saved with each checkpoint and handed back on resume (the CSV logger's row count)."""
        return None

    def close(self) -> None:
        pass


def check_loggers(names: list[str]) -> None:
    """Unknown loggers and missing packages are config errors, found before anything is written."""
    for name in names:
        try:
            entry = LOGGERS.get(name)
        except KeyError as err:
            raise ConfigError(f"train.loggers: {err.args[0]}") from None
        if entry.requires is not None and importlib.util.find_spec(entry.requires[0]) is None:
            package, extra = entry.requires
            raise ConfigError(f"train.loggers: {name!r} needs the {package} package, which is not installed: "
                              f"pip install 'sdlora[{extra}]' (or drop {name!r} from train.loggers)")


@LOGGERS.register("csv", "scalars.csv: step, task, epoch, name, value")
class CsvLogger(ScalarLogger):
    FIELDS = ("step", "task", "epoch", "name", "value")

    def __init__(self, folder: Path, run_name: str, config: dict[str, Any], resume: Resume | None) -> None:
        super().__init__(folder, run_name, config, resume)
        self.path = folder / "scalars.csv"
        keep: list[list[str]] = []
        if resume is not None and self.path.is_file():  # the rows written up to the checkpoint, no more
            with self.path.open(newline="") as handle:
                keep = list(csv.reader(handle))[1:][: resume.positions.get("csv", 0)]
        self.rows = len(keep)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(self.FIELDS)
            writer.writerows(keep)
        os.replace(tmp, self.path)
        self.handle = self.path.open("a", newline="")
        self.writer = csv.writer(self.handle)

    def log(self, step: int, task: int, epoch: int, scalars: dict[str, float]) -> None:
        for name, value in scalars.items():
            self.writer.writerow([step, task, epoch, name, f"{float(value):.8g}"])
            self.rows += 1
        self.handle.flush()

    def position(self) -> int:
        return self.rows

    def close(self) -> None:
        self.handle.close()


@LOGGERS.register("tensorboard", "TensorBoard event files in tensorboard/")
class TensorBoardLogger(ScalarLogger):
    requires = ("tensorboard", "tensorboard")

    def __init__(self, folder: Path, run_name: str, config: dict[str, Any], resume: Resume | None) -> None:
        super().__init__(folder, run_name, config, resume)
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events after the checkpoint when a resumed run writes again
        self.writer = SummaryWriter(str(folder / "tensorboard"),
                                    purge_step=None if resume is None else resume.step + 1)

    def log(self, step: int, task: int, epoch: int, scalars: dict[str, float]) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, float(value), step)

    def close(self) -> None:
        self.writer.close()


@LOGGERS.register("wandb", "Weights & Biases (WANDB_MODE=offline honoured)")
class WandbLogger(ScalarLogger):
    requires = ("wandb", "wandb")

    def __init__(self, folder: Path, run_name: str, config: dict[str, Any], resume: Resume | None) -> None:
        super().__init__(folder, run_name, config, resume)
        import wandb

        id_file = folder / "wandb_id.txt"  # the same W&B run continues after --resume
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "sdlora"), name=run_name, id=run_id,
                              resume="allow", dir=str(folder), config=config)

    def log(self, step: int, task: int, epoch: int, scalars: dict[str, float]) -> None:
        self.run.log({**scalars, "task": task, "epoch": epoch}, step=step)

    def close(self) -> None:
        self.run.finish()


class Loggers:
    """Every configured logger behind one call."""

    def __init__(self, names: list[str], folder: Path, run_name: str, config: dict[str, Any],
                 resume: Resume | None) -> None:
        self.names = list(names)
        self.loggers = [LOGGERS.get(n)(folder, run_name, config, resume) for n in names]

    def positions(self) -> dict[str, int]:
        return {n: p for n, lg in zip(self.names, self.loggers, strict=True) if (p := lg.position()) is not None}

    def log(self, step: int, task: int, epoch: int, scalars: dict[str, float]) -> None:
        for logger in self.loggers:
            logger.log(step, task, epoch, scalars)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
