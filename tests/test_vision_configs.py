"""Every YAML under configs/ (anyone's) loads, its plugin options validate with the registered plugins."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdlora.config import load_config, read_config_file, resolve_options
from sdlora.registry import BACKBONES, BENCHMARKS, METHODS
from sdlora.typed import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALL = [p for p in sorted(CONFIGS.rglob("*.yaml")) + sorted(CONFIGS.rglob("*.yml")) if "bases" not in p.parts]
VISION = sorted((CONFIGS / "vision").glob("*.yaml"))
SECTIONS = (("benchmark", BENCHMARKS), ("backbone", BACKBONES), ("method", METHODS))


def rel(path: Path) -> str:
    return str(path.relative_to(CONFIGS))


def test_configs_are_found():
    assert len(VISION) >= 14 and all(p in ALL for p in VISION)


@pytest.mark.parametrize("path", ALL, ids=rel)
def test_config_and_plugin_options_validate(path):
    cfg = load_config(path)
    for section, registry in SECTIONS:
        plugin = getattr(cfg, section)
        resolve_options(registry.get(plugin.name).Options, plugin.options, f"{rel(path)}: {section}.options")


@pytest.mark.parametrize("path", VISION, ids=rel)
def test_vision_configs_name_their_source_and_published_numbers(path):
    cfg = load_config(path)
    assert cfg.source and "Table" in cfg.source
    assert set(cfg.published) >= {"final_accuracy", "average_incremental_accuracy"}
    assert all(0 < v < 100 for v in cfg.published.values())
    assert cfg.seeds == [1993, 1994, 1995, 1996, 1997]
    assert cfg.benchmark.options["normalize"] == "none" and cfg.train.batch_size == 128
    flavour = path.stem.split("_")[-1] if not path.stem.endswith("_json") else "official"
    expected = {"official": ("sgd", "factors", "official"), "paper": ("adam", "product", "paper")}[flavour]
    assert (cfg.train.optimizer, cfg.method.options["norm"], cfg.method.options["current_mode"]) == expected


def test_task_splits_match_the_paper():
    """Classes per task x number of tasks = the benchmark's classes, for every setting of Tables 2, 3, 6."""
    classes = {"imagenet_r": 200, "imagenet_a": 200, "domainnet": 345, "cifar100": 100, "cub200": 200}
    for path in VISION:
        cfg = load_config(path)
        tasks = int(path.stem.split("_")[2] if path.stem.startswith("imagenet") else path.stem.split("_")[1])
        assert cfg.benchmark.init_classes == cfg.benchmark.increment
        assert cfg.benchmark.increment * tasks == classes[cfg.benchmark.name], path.name


def test_a_broken_config_would_be_caught(tmp_path):
    data = read_config_file(CONFIGS / "vision" / "imagenet_r_10_official.yaml")
    data["method"]["options"]["norm"] = "frobenius"
    cfg = load_config(data=data)
    with pytest.raises(ConfigError, match="frobenius"):
        resolve_options(METHODS.get("sdlora").Options, cfg.method.options, "method.options")
