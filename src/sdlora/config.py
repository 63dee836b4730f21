"""The run configuration: YAML -> typed dataclasses, `--set a.b=c` overrides, saved with every run.

Plugin sections (`benchmark`, `backbone`, `method`) carry a `name` and free `options`; the options are
validated against the `Options` dataclass of the registered plugin (see `resolve_options`). The method
section also holds the classifier settings (`method.classifier`, `sdlora.method_config`), which each method
resolves against what it supports.

A config may extend others with `base: other.yaml` (or a list; paths relative to the file): the bases are
merged first, then the file on top, mapping by mapping; lists and scalars replace; a plugin section whose
`name` differs from the base's starts from scratch (another method's options and classifier would not apply).
Keys under their old names are read with a warning (`sdlora.config_migration`).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import yaml

from sdlora import config_migration
from sdlora.method_config import ClassifierConfig as ClassifierConfig  # re-exported
from sdlora.method_config import MethodConfig
from sdlora.typed import ConfigError, ReadWhen, from_dict, to_dict

#: YAML 1.2 floats: PyYAML (YAML 1.1) reads `1e-3` (no dot) as a string
_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no code runs: no python/object tags) with YAML 1.2 floats and duplicate keys refused."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                duplicate = False
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


ConfigLoader.yaml_implicit_resolvers = {k: [r for r in v if r[0] != "tag:yaml.org,2002:float"]
                                        for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def parse_yaml(text: str, source: str) -> Any:
    """YAML text -> data; a syntax error becomes a ConfigError naming `source`, line and column."""
    try:
        return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 (ConfigLoader is a SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        what = " ".join(str(p) for p in (err.context, err.problem) if p)
        raise ConfigError(f"{where}: YAML error: {what}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: YAML error: {err}") from None
    except RecursionError:
        raise ConfigError(f"{source}: YAML error: nested too deeply") from None


def read_yaml_file(path: Path) -> dict[str, Any]:
    """One YAML file holding a mapping (an empty file is an empty mapping)."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    data = parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else in `top` replaces; a mapping with a different
    `name` (another plugin) replaces the base's mapping whole."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        old = out.get(key)
        same_plugin = isinstance(old, dict) and isinstance(value, dict) and old.get("name", value.get("name")) == \
            value.get("name", old.get("name"))
        out[key] = merge(cast(dict[str, Any], old), value) if same_plugin else copy.deepcopy(value)
    return out


def anchor_paths(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A relative `benchmark.data_root` written in a file is relative to that file's folder (as `base:` is), so a
    config means the same from any working directory; `--set` values stay relative to where the command runs."""
    bench = data.get("benchmark")
    if not isinstance(bench, dict):
        return data
    root = bench.get("data_root")
    if isinstance(root, str) and root and not Path(root).expanduser().is_absolute():
        data = {**data, "benchmark": {**bench, "data_root": str((folder / root).resolve())}}
    return data


def compose(data: dict[str, Any], folder: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Resolve `base:` (a path or a list, relative to `folder`) recursively; cycles are refused. Relative paths in
    each file are anchored to its folder (`anchor_paths`)."""
    data = anchor_paths(dict(data), folder)
    bases = data.pop("base", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"base: expected a file name or a list of file names, got {bases!r}")
    merged: dict[str, Any] = {}
    for name in bases:
        path = (folder / name).resolve()
        if path in chain:
            cycle = " -> ".join(p.name for p in (*chain, path))
            raise ConfigError(f"base: cycle in config bases ({cycle})")
        layer = compose(read_yaml_file(path), path.parent, (*chain, path))
        merged = merge(config_migration.shadow(merged, layer), layer)
    return merge(config_migration.shadow(merged, data), data)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A config file with its bases resolved: the plain data that `load_config` validates."""
    p = Path(path)
    return compose(read_yaml_file(p), p.resolve().parent, (p.resolve(),))


@dataclass
class BenchmarkConfig:
    """Dataset and task split (PILOT's `init_cls` / `increment`; a remainder becomes one more task)."""

    name: str
    data_root: str | None = None  # falls back to $SDLORA_DATA; relative: to the config file's folder
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


#: the optimisers' own defaults (SGD's momentum, Adam's betas), also what the other optimiser accepts unchanged
SGD_MOMENTUM = 0.9
ADAM_BETAS = (0.9, 0.999)


#: keys of the multistep schedule only
MULTISTEP = ReadWhen("scheduler", ("multistep",))

#: `train.compile`: none, or torch.compile's mode (sdlora.engine.compiled)
CompileMode = Literal["none", "default", "reduce-overhead", "max-autotune"]


@dataclass
class TrainConfig:
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = SGD_MOMENTUM
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: list(ADAM_BETAS))
    epochs: int = 20
    # the global batch of one optimiser step: over all processes (torchrun) and all accumulated micro-batches;
    # each forward sees batch_size / (processes * accumulate_steps) samples
    batch_size: int = 128
    accumulate_steps: int = 1
    eval_batch_size: int = 256
    # passes without gradient (feature passes, evaluation) read their samples longest first, so a batch pads
    # little (sdlora.data.length_order); per-sample outputs are put back in dataset order. Backbones with
    # fixed input shapes (images) ignore it. false: dataset order (batches as before this option)
    length_aware_passes: bool = True
    # opt-in: sort each window of this many consecutive training batches of the epoch's shuffle by length and
    # shuffle the window's batches again (0: off, the plain shuffle). Changes which texts share a batch
    length_buckets: int = 0
    # cosine: CosineAnnealingLR(T_max=epochs, eta_min=min_lr); quarter_cosine: lr * cos(0.495 pi e / (epochs - 1))
    # for epoch e (InfLoRA's / CODA-Prompt's CosineSchedule; min_lr unused)
    scheduler: Literal["constant", "multistep", "cosine", "quarter_cosine"] = "constant"
    milestones: Annotated[list[int], MULTISTEP] = field(default_factory=list)
    gamma: Annotated[float, MULTISTEP] = 0.1
    min_lr: Annotated[float, ReadWhen("scheduler", ("cosine",))] = 0.0
    first_task: FirstTaskConfig = field(default_factory=FirstTaskConfig)
    grad_clip: float | None = None
    amp: Literal["none", "bf16", "fp16"] = "none"  # used only on a GPU
    num_workers: int = 0
    # opt-in: the backbone's forward through torch.compile with this mode (sdlora.engine.compiled): the same
    # results within float rounding, a compile at the start and at each task start
    compile: CompileMode = "none"
    # (loss, freeze_old_head, head_lr, head_init, head_init_scale and classifier moved to method.classifier:
    # sdlora.method_config; the old keys are still read, sdlora.config_migration)
    # scalar loggers (sdlora.engine.loggers): csv (scalars.csv), tensorboard, wandb; [] for none
    loggers: list[str] = field(default_factory=lambda: ["csv"])

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "accumulate_steps"):
            if getattr(self, name) < (0 if name == "epochs" else 1):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if len(self.betas) != 2:
            raise ValueError(f"betas must be [beta1, beta2], got {self.betas}")
        # each optimiser's own settings: one another optimiser would ignore is refused (its default is left alone,
        # so a config can switch optimiser without deleting the other's keys)
        if self.optimizer != "sgd" and self.momentum != SGD_MOMENTUM:
            raise ValueError(f"momentum ({self.momentum}) is SGD's; {self.optimizer} takes betas (now {self.betas})")
        if self.optimizer == "sgd" and tuple(self.betas) != ADAM_BETAS:
            raise ValueError(f"betas ({self.betas}) are Adam's; sgd takes momentum (now {self.momentum})")
        first = self.first_task
        if self.scheduler != "multistep" and (first.milestones is not None or first.gamma is not None):
            raise ValueError(f"first_task.milestones and first_task.gamma shape the multistep schedule; with "
                             f"scheduler {self.scheduler!r} they change nothing: remove them")
        if self.length_buckets < 0:
            raise ValueError(f"length_buckets must be 0 (off) or a number of batches, got {self.length_buckets}")
        if self.batch_size % self.accumulate_steps:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of accumulate_steps "
                             f"({self.accumulate_steps}): every micro-batch has the same size")


@dataclass
class RunConfig:
    benchmark: BenchmarkConfig
    backbone: PluginConfig
    method: MethodConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    seeds: list[int] = field(default_factory=lambda: [1993])
    device: str = "auto"
    deterministic: bool = False
    name: str | None = None
    source: str | None = None  # where the setting comes from (paper table, official config)
    published: dict[str, float] | None = None  # published numbers to compare against (percent)
    eval_split: Literal["test", "val"] = "test"  # tune on val, report on test
    # evaluate after tasks k, 2k, ... and always after the last one (1: every task, the full accuracy matrix;
    # 0: the last task only). Rows not evaluated are null in results.json, and so are the metrics that need
    # them (sdlora.engine.metrics.EXACT_UNDER_SCHEDULE)
    eval_every: int = 1
    # classifier settings shared by whatever method the config runs (`method.classifier` keys win over them), so
    # a config that changes the method keeps its base's classifier; null: the method's own defaults. Resolved into
    # `method.classifier` (and null here) before a run records its config
    classifier: ClassifierConfig | None = None

    def __post_init__(self) -> None:
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be 0 (last task only) or a number of tasks, got {self.eval_every}")


def set_override(data: dict[str, Any], assignment: str) -> None:
    """Apply `a.b.c=value` to a nested dict; the value is parsed as YAML (numbers, lists, null...)."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"--set {assignment!r}: the key must be dot-separated names, like train.lr")
    value = parse_yaml(raw, f"--set {key}") if raw.strip() else ""
    node = data
    for part in parts[:-1]:
        if not isinstance(node.get(part, {}), dict):
            raise ConfigError(f"--set {key}: {part!r} is not a section")
        node = node.setdefault(part, {})
    config_migration.shadow_override(data, parts)  # e.g. train.head_init replaces method.classifier.head_init
    node[parts[-1]] = value


def load_saved_config(path: Path) -> RunConfig:
    """The config.yaml sdlora wrote into a run folder, read in today's layout (`config_migration.migrate`, saved:
    one warning for the file)."""
    data = parse_yaml(path.read_text(), str(path))
    if isinstance(data, dict):
        config_migration.migrate(data, str(path), saved=True)
    return load_config(data=data, source=str(path))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                data: dict[str, Any] | None = None, source: str | None = None) -> RunConfig:
    """Read YAML (or take `data`, read from `source`), apply overrides, validate into a RunConfig."""
    if data is None:
        if path is None:
            raise ConfigError("no config given")
        data = read_config_file(path)
    elif not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping, got {type(data).__name__}")
    else:
        data = compose(data, Path.cwd())
    data = copy.deepcopy(data)
    for assignment in overrides or []:
        set_override(data, assignment)
    if "seed" in data:  # a single seed is allowed as a convenience (`--set seed=7` too)
        data["seeds"] = [data.pop("seed")]
    config_migration.migrate(data, source or (str(path) if path is not None else "config"))
    cfg = from_dict(RunConfig, data, "")
    if not cfg.seeds:
        raise ConfigError("seeds: at least one seed is required")
    repeated = sorted({s for s in cfg.seeds if cfg.seeds.count(s) > 1})
    if repeated:  # one folder per seed: a repeat would train it twice and count it twice in the summary
        raise ConfigError(f"seeds: {repeated} given more than once; each seed runs once")
    return cfg


def resolve_options(options_cls: type, options: dict[str, Any], key: str) -> Any:
    """Validate a plugin's free `options` against its dataclass."""
    return from_dict(options_cls, options, key)


def plugin_options(options_cls: type, cfg: RunConfig, section: str) -> Any:
    """The options of the config's `section` ("benchmark", "backbone", "method") resolved against the plugin's
    `Options`: what a run records (`engine.build.validate_plugins`) and what the command line checks before
    torch is imported (`sdlora.cli_checks`, the same class found through `sdlora.catalog`)."""
    return resolve_options(options_cls, getattr(cfg, section).options, f"{section}.options")


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    return to_dict(cfg)
