"""Build the pieces of a run from the config through the registries."""

from __future__ import annotations

from typing import Any

from sdlora.backbones.base import Backbone
from sdlora.config import RunConfig, resolve_options
from sdlora.data.base import BenchmarkData, resolve_data_root
from sdlora.data.scenario import Scenario
from sdlora.data.transforms import TransformOptions
from sdlora.methods.base import Method
from sdlora.registry import BACKBONES, BENCHMARKS, METHODS


def backbone_data_config(cfg: RunConfig) -> dict[str, Any]:
    """The backbone's expected input (timm data config), without loading its weights."""
    entry = BACKBONES.get(cfg.backbone.name)
    return entry.data_config(resolve_options(entry.Options, cfg.backbone.options, "backbone.options"))


def make_benchmark(cfg: RunConfig) -> Any:
    """The benchmark object; image benchmarks get the backbone's data config for their `model` options."""
    entry = BENCHMARKS.get(cfg.benchmark.name)
    options = resolve_options(entry.Options, cfg.benchmark.options, "benchmark.options")
    if isinstance(options, TransformOptions) and options.needs_model():  # a paper config needs no backbone
        options.bind_model(backbone_data_config(cfg))
    return entry(options, resolve_data_root(cfg.benchmark.data_root))


def build_benchmark(cfg: RunConfig) -> BenchmarkData:
    return make_benchmark(cfg).load()


def build_scenario(cfg: RunConfig, data: BenchmarkData, seed: int) -> Scenario:
    b = cfg.benchmark
    return Scenario(data, b.class_order, b.init_classes, b.increment, seed, b.num_tasks)


def build_backbone(cfg: RunConfig) -> Backbone:
    entry = BACKBONES.get(cfg.backbone.name)
    return entry(resolve_options(entry.Options, cfg.backbone.options, "backbone.options"))


def build_method(cfg: RunConfig, backbone: Backbone) -> Method:
    entry = METHODS.get(cfg.method.name)
    return entry(backbone, resolve_options(entry.Options, cfg.method.options, "method.options"), cfg.train)


def validate_plugins(cfg: RunConfig) -> None:
    """Fail early (before loading data or weights) on unknown plugin names or bad options."""
    for section, registry in (("benchmark", BENCHMARKS), ("backbone", BACKBONES), ("method", METHODS)):
        plugin = getattr(cfg, section)
        resolve_options(registry.get(plugin.name).Options, plugin.options, f"{section}.options")
