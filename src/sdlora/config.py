"""The run configuration: YAML -> typed dataclasses, `--set a.b=c` overrides, saved with every run.

Plugin sections (`benchmark`, `backbone`, `method`) carry a `name` and free `options`; the options are
validated against the `Options` dataclass of the registered plugin (see `resolve_options`).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from sdlora.typed import ConfigError, from_dict, to_dict


@dataclass
class BenchmarkConfig:
    """Dataset and task split (PILOT's `init_cls` / `increment`; a remainder becomes one more task)."""

    name: str
    data_root: str | None = None  # falls back to $SDLORA_DATA
    class_order: str | list[int] = "permutation"  # permutation (seeded) | sorted | a benchmark's own order | list
    init_classes: int | None = None  # classes of the first task; default = increment
    increment: int = 10
    num_tasks: int | None = None  # stop after this many tasks (None: all)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class PluginConfig:
    """A registered plugin by name plus its own options."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class FirstTaskConfig:
    """Overrides for the first task (PILOT's init_lr / init_epoch / init_milestones / init_lr_decay)."""

    lr: float | None = None
    epochs: int | None = None
    milestones: list[int] | None = None
    gamma: float | None = None


@dataclass
class ClassifierConfig:
    """What predicts at evaluation time; training always goes through the linear head (it carries the loss).

    `prototypes`: cosine nearest-class-mean over the adapted features, class means taken after each task.
    `drift: sdc`: semantic drift compensation (Yu et al., CVPR 2020) moves old class means by the drift that
    the current task's samples show: mu_c += sum_i w_ic (f_new(x_i) - f_old(x_i)) / sum_i w_ic,
    w_ic = exp(-||g_old(x_i) - g(mu_c)||^2 / (2 sigma^2)), g = L2-normalisation; current data only.
    """

    kind: Literal["linear", "prototypes"] = "linear"
    drift: Literal["none", "sdc"] = "none"
    sdc_sigma: float = 0.3


@dataclass
class TrainConfig:
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    epochs: int = 20
    batch_size: int = 128
    eval_batch_size: int = 256
    scheduler: Literal["constant", "multistep", "cosine"] = "constant"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    min_lr: float = 0.0
    first_task: FirstTaskConfig = field(default_factory=FirstTaskConfig)
    grad_clip: float | None = None
    amp: Literal["none", "bf16", "fp16"] = "none"  # used only on a GPU
    loss: Literal["current", "seen"] = "current"  # CE over the current task's logits (official) or all seen
    freeze_old_head: bool = True  # old head rows get no update (needed with weight decay / Adam)
    num_workers: int = 0
    head_lr: float | None = None  # learning rate of the classifier head (None: same as lr)
    # new head rows: random (official) or the class means of the task's features (the LP-then-FT idea:
    # a random head distorts pretrained features; rows = scale * mu_c / (||mu_c|| * mean ||f||))
    head_init: Literal["random", "class_mean"] = "random"
    head_init_scale: float = 10.0
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < (0 if name == "epochs" else 1):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass
class RunConfig:
    benchmark: BenchmarkConfig
    backbone: PluginConfig
    method: PluginConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    seeds: list[int] = field(default_factory=lambda: [1993])
    device: str = "auto"
    deterministic: bool = False
    name: str | None = None
    source: str | None = None  # where the setting comes from (paper table, official config)
    published: dict[str, float] | None = None  # published numbers to compare against (percent)
    eval_split: Literal["test", "val"] = "test"  # tune on val, report on test


def set_override(data: dict[str, Any], assignment: str) -> None:
    """Apply `a.b.c=value` to a nested dict; the value is parsed as YAML (numbers, lists, null...)."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        if not isinstance(node.get(part, {}), dict):
            raise ConfigError(f"--set {key}: {part!r} is not a section")
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                data: dict[str, Any] | None = None) -> RunConfig:
    """Read YAML (or take `data`), apply overrides, validate into a RunConfig."""
    if data is None:
        if path is None:
            raise ConfigError("no config given")
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        data = yaml.safe_load(p.read_text()) or {}
    data = copy.deepcopy(data)
    for assignment in overrides or []:
        set_override(data, assignment)
    if "seed" in data:  # a single seed is allowed as a convenience (`--set seed=7` too)
        data["seeds"] = [data.pop("seed")]
    cfg = from_dict(RunConfig, data, "")
    if not cfg.seeds:
        raise ConfigError("seeds: at least one seed is required")
    return cfg


def resolve_options(options_cls: type, options: dict[str, Any], key: str) -> Any:
    """Validate a plugin's free `options` against its dataclass."""
    return from_dict(options_cls, options, key)


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    return to_dict(cfg)


def replace(cfg: RunConfig, **changes: Any) -> RunConfig:
    return dataclasses.replace(cfg, **changes)
