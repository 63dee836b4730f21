"""Build the pieces of a run from the config through the registries."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from sdlora.backbones.base import Backbone
from sdlora.config import RunConfig, plugin_options
from sdlora.data.base import BenchmarkData, resolve_data_root
from sdlora.data.scenario import Scenario
from sdlora.data.transforms import TransformOptions, transform_spec
from sdlora.engine.loggers import check_loggers
from sdlora.engine.seeding import seed_everything
from sdlora.method_config import ClassifierConfig
from sdlora.methods.base import Method
from sdlora.registry import BACKBONES, BENCHMARKS, METHODS
from sdlora.typed import ConfigError, to_dict


def backbone_data_config(cfg: RunConfig) -> dict[str, Any]:
    """The backbone's expected input (timm data config), without loading its weights."""
    entry = BACKBONES.get(cfg.backbone.name)
    return entry.data_config(plugin_options(entry.Options, cfg, "backbone"))


def benchmark_options(cfg: RunConfig) -> Any:
    """The benchmark's options; image benchmarks' `model` values bound to the backbone's data config."""
    entry = BENCHMARKS.get(cfg.benchmark.name)
    options = plugin_options(entry.Options, cfg, "benchmark")
    if isinstance(options, TransformOptions) and options.needs_model():  # a paper config needs no backbone
        options.bind_model(backbone_data_config(cfg))
    return options


def make_benchmark(cfg: RunConfig) -> Any:
    """The benchmark object, built from `benchmark_options`."""
    entry = BENCHMARKS.get(cfg.benchmark.name)
    return entry(benchmark_options(cfg), resolve_data_root(cfg.benchmark.data_root))


def run_preprocess(cfg: RunConfig) -> dict[str, Any] | None:
    """How a run turns images into tensors (`transform_spec`: options and the bound backbone data config), the one
    answer for train, learn, predict and exports; None for text backbones. A benchmark without transform options
    (synthetic tensors) gets no augmentation at the backbone's input size and [0, 1] pixels."""
    if BACKBONES.get(cfg.backbone.name).modality != "images":
        return None
    options = benchmark_options(cfg)
    if not isinstance(options, TransformOptions):
        options = TransformOptions(image_size="model", augment="none")
        options.bind_model(backbone_data_config(cfg))
    return transform_spec(options)


def build_benchmark(cfg: RunConfig) -> BenchmarkData:
    return make_benchmark(cfg).load()


def build_scenario(cfg: RunConfig, data: BenchmarkData, seed: int) -> Scenario:
    b = cfg.benchmark
    return Scenario(data, b.class_order, b.init_classes, b.increment, seed, b.num_tasks)


def build_backbone(cfg: RunConfig) -> Backbone:
    entry = BACKBONES.get(cfg.backbone.name)
    return entry(plugin_options(entry.Options, cfg, "backbone"))


def build_model(cfg: RunConfig, seed: int, device: torch.device | str) -> Method:
    """Seed, then backbone, then method, on `device`: the one way a run's model is built (train, resume, eval,
    learn, predict, load), so random-init backbones and heads come out the same every time."""
    seed_everything(seed, cfg.deterministic)
    backbone = build_backbone(cfg).to(device)
    return build_method(cfg, backbone).to(device)


def build_method(cfg: RunConfig, backbone: Backbone) -> Method:
    """The method with its options, the train settings and its classifier settings (`method.classifier`)."""
    entry = METHODS.get(cfg.method.name)
    options = plugin_options(entry.Options, cfg, "method")
    return entry(backbone, options, cfg.train, cfg.method.classifier)


PLUGIN_SECTIONS = (("benchmark", BENCHMARKS), ("backbone", BACKBONES), ("method", METHODS))


def validate_plugins(cfg: RunConfig) -> RunConfig:
    """Fail early (before loading data or weights, before the output folder is touched) on unknown plugin
    names, bad options, classifier settings the method refuses and degenerate settings; returns `cfg` with
    every plugin's options and the method's classifier resolved (defaults filled in), which is what
    config.yaml and results.json record."""
    resolved, options = {}, {}
    for section, registry in PLUGIN_SECTIONS:
        plugin = getattr(cfg, section)
        options[section] = plugin_options(registry.get(plugin.name).Options, cfg, section)
        resolved[section] = dataclasses.replace(plugin, options=to_dict(options[section]))
    check_backbone_options(cfg.backbone.name, options["backbone"])
    resolved["method"] = dataclasses.replace(resolved["method"], classifier=resolve_classifier(cfg))
    cfg = dataclasses.replace(cfg, **resolved, classifier=None)
    check_loggers(cfg.train.loggers)
    check_degenerate(cfg)
    return cfg


def check_backbone_options(name: str, options: Any) -> None:
    """The backbone's own checks of its valid options (`Backbone.check_options`: timm's model registry), worded
    as an options error. After every section's options: the torch-free checks of the command line, which cannot
    run these, then refuse the same configs first."""
    try:
        BACKBONES.get(name).check_options(options)
    except ValueError as err:
        raise ConfigError(f"backbone.options: {err}") from err


def resolve_classifier(cfg: RunConfig) -> ClassifierConfig:
    """The classifier the method runs: `shared_classifier`'s settings with the method's defaults filled in (a
    ConfigError naming the key of a setting the method refuses)."""
    given, key = shared_classifier(cfg)
    return METHODS.get(cfg.method.name).classifier_support.resolve(given, key)


def shared_classifier(cfg: RunConfig) -> tuple[ClassifierConfig | None, str]:
    """The method's classifier settings over the config's shared `classifier:` (a method key wins), and the key
    that a refusal names: `classifier` when the method's own section sets none of them."""
    own, shared = cfg.method.classifier, cfg.classifier
    if shared is None:
        return own, "method.classifier"
    if own is None or all(getattr(own, f.name) is None for f in dataclasses.fields(ClassifierConfig)):
        return shared, "classifier"
    merged = {f.name: getattr(own, f.name) if getattr(own, f.name) is not None else getattr(shared, f.name)
              for f in dataclasses.fields(ClassifierConfig)}
    return ClassifierConfig(**merged), "method.classifier (over classifier)"


def check_degenerate(cfg: RunConfig) -> None:
    """Settings that would run but learn nothing are refused with the reason (`cfg` resolved: `validate_plugins`)."""
    b = cfg.benchmark
    trains = getattr(METHODS.get(cfg.method.name), "trains", True)
    first = b.init_classes if b.init_classes is not None else b.increment
    single = [f"benchmark.{k}: 1" for k in ("init_classes", "increment") if getattr(b, k) == 1]
    loss = cfg.method.classifier.loss
    if trains and loss == "current" and (first == 1 or (b.increment == 1 and b.num_tasks != 1)):
        raise ConfigError(
            f"method.classifier.loss: 'current' with one class per task ({', '.join(single)}) gives an identically "
            "zero loss (cross-entropy over a single logit), so nothing would be learned; set "
            "method.classifier.loss: seen or put at least two classes in every task")
    check_unread(cfg, trains)


def check_unread(cfg: RunConfig, trains: bool) -> None:
    """Settings across sections that would change nothing (`typed.ReadWhen` covers those within one section)."""
    c, t = cfg.method.classifier, cfg.train
    if trains and c.freeze_old_head is False and c.loss == "current" and t.weight_decay == 0:
        raise ConfigError("method.classifier.freeze_old_head: false changes nothing here: with loss 'current' old "
                          "rows get no gradient and without train.weight_decay nothing else moves them (not Adam "
                          "either); set loss: seen or a weight decay, or leave it true")
    if t.length_buckets and BACKBONES.get(cfg.backbone.name).modality != "text":
        raise ConfigError(f"train.length_buckets: {t.length_buckets} changes nothing: a {cfg.backbone.name} "
                          "backbone's inputs all have one length; remove it")
