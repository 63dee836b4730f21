"""Image transforms: the paper configs keep today's pipeline; augment / normalize / image_size options; digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms as T

from engine_helpers import TINY_VIT
from scripts import load_benchmark_script
from sdlora.backbones.timm_vit import TimmViT
from sdlora.cli import main
from sdlora.config import load_config, resolve_options
from sdlora.data.transforms import TimmAugment, TransformOptions, build_transforms, describe, resolve_transforms
from sdlora.engine.build import make_benchmark
from sdlora.registry import BENCHMARKS
from sdlora.typed import ConfigError

ROOT = Path(__file__).resolve().parents[1]
VISION = sorted((ROOT / "configs" / "vision").glob("*.yaml"))

# repr of the transforms every paper config resolved to before `augment` existed (224, normalize: none)
TODAY_TRAIN = """Compose(
    RandomResizedCrop(size=(224, 224), scale=(0.05, 1.0), ratio=(0.75, 1.3333), interpolation=bilinear, antialias=True)
    RandomHorizontalFlip(p=0.5)
    ToTensor()
)"""
TODAY_TEST = """Compose(
    Resize(size=256, interpolation=bicubic, max_size=None, antialias=True)
    CenterCrop(size=(224, 224))
    ToTensor()
)"""


def tiny_data_config(**kwargs) -> dict:
    return TimmViT.data_config(resolve_options(TimmViT.Options, {**TINY_VIT, **kwargs}, "backbone.options"))


def options(name: str = "image_folder", model: dict | None = None, **values) -> TransformOptions:
    entry = BENCHMARKS.get(name)
    opts = resolve_options(entry.Options, {"root": "x", **values} if name == "image_folder" else values, "o")
    if model is not None:
        opts.bind_model(model)
    return opts


def picture(size: int = 20, seed: int = 0, mode: str = "RGB") -> Image.Image:
    channels = (size, size, 3) if mode == "RGB" else (size, size)
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, channels, dtype=np.uint8)).convert(mode)


@pytest.mark.parametrize("path", VISION, ids=lambda p: p.name)
def test_paper_configs_resolve_to_todays_transforms(path):
    bench = make_benchmark(load_config(path))
    built = build_transforms(bench.options)
    assert repr(built["train"]) == TODAY_TRAIN and repr(built["test"]) == TODAY_TEST
    record = describe(bench.options, built)
    assert (record["augment"], record["image_size"], record["mean"], record["normalize"]) == ("official", 224, None,
                                                                                                "none")
    # same random draws, same pixels as the explicit torchvision pipeline of the official code
    today = T.Compose([T.RandomResizedCrop(224, scale=(0.05, 1.0), ratio=(3 / 4, 4 / 3)), T.RandomHorizontalFlip(),
                       T.ToTensor()])
    image = picture(40)
    torch.manual_seed(7)
    ours = built["train"](image)
    torch.manual_seed(7)
    assert torch.equal(ours, today(image))


def test_paper_benchmarks_default_to_official_and_image_folder_to_none():
    for name in ("imagenet_r", "imagenet_a", "cub200", "domainnet", "cifar100"):
        opts = BENCHMARKS.get(name).Options()
        assert (opts.augment, opts.normalize, opts.image_size) == ("official", "none", 224), name
        assert not opts.needs_model()
    opts = options()
    assert (opts.augment, opts.normalize, opts.image_size) == ("none", "model", "model") and opts.needs_model()
    assert options(image_size=32, normalize="none", augment="timm").needs_model()  # timm's crop_pct, interpolation


def test_the_engine_binds_the_backbones_data_config_only_when_asked(tmp_path):
    data = {"benchmark": {"name": "image_folder", "options": {"root": str(tmp_path)}},
            "backbone": {"name": "timm_vit", "options": TINY_VIT}, "method": {"name": "linear_probe"}}
    bound = make_benchmark(load_config(data=data)).options
    assert bound.model_data["input_size"] == (3, 32, 32) and resolve_transforms(bound).image_size == 32
    data["benchmark"]["options"].update(image_size=16, normalize="none")
    assert make_benchmark(load_config(data=data)).options.model_data == {}


def test_tiny_vit_data_config_has_its_own_input_size_and_the_tags_stats():
    config = tiny_data_config()
    assert config["input_size"] == (3, 32, 32)  # timm's pretrained cfg alone would say 224
    assert config["mean"] == (0.5, 0.5, 0.5) and config["interpolation"] == "bicubic"
    dino = tiny_data_config(model="vit_small_patch16_224.dino")
    assert dino["mean"] == pytest.approx(IMAGENET_DEFAULT_MEAN) and dino["std"] == pytest.approx(IMAGENET_DEFAULT_STD)


def test_normalize_model_uses_the_backbones_mean_and_std():
    plain = build_transforms(options(model=tiny_data_config(), normalize="none"))["test"](picture())
    augreg = build_transforms(options(model=tiny_data_config()))["test"](picture())
    assert torch.allclose(augreg, (plain - 0.5) / 0.5, atol=1e-6)
    dino = build_transforms(options(model=tiny_data_config(model="vit_small_patch16_224.dino")))["test"](picture())
    mean, std = torch.tensor(IMAGENET_DEFAULT_MEAN)[:, None, None], torch.tensor(IMAGENET_DEFAULT_STD)[:, None, None]
    assert torch.allclose(dino, (plain - mean) / std, atol=1e-5)
    explicit = build_transforms(options(model=tiny_data_config(), normalize={"mean": [0.1, 0.2, 0.3],
                                                                               "std": [2.0, 2.0, 2.0]}))
    values = explicit["test"](picture())
    assert torch.allclose(values, (plain - torch.tensor([0.1, 0.2, 0.3])[:, None, None]) / 2.0, atol=1e-6)


def test_augment_none_trains_on_the_eval_transform_and_official_does_not():
    none = build_transforms(options(model=tiny_data_config()))
    image = picture(48)
    assert none["train"] is none["test"] and tuple(none["train"](image).shape) == (3, 32, 32)
    official = build_transforms(options(model=tiny_data_config(), augment="official"))
    torch.manual_seed(0)
    draws = [official["train"](image) for _ in range(4)]
    assert not all(torch.equal(draws[0], d) for d in draws[1:])


def test_augment_timm_passes_its_arguments_to_create_transform():
    opts = options(model=tiny_data_config(), augment="timm",
                   timm={"scale": [0.6, 1.0], "ratio": [0.9, 1.1], "hflip": 0.0, "auto_augment": "rand-m9-mstd0.5",
                         "re_prob": 0.25})
    built = build_transforms(opts)
    steps = {type(s).__name__: s for s in built["train"].transforms}
    crop = steps["RandomResizedCropAndInterpolation"]
    assert crop.scale == (0.6, 1.0) and crop.ratio == (0.9, 1.1) and crop.size == (32, 32)
    assert "RandomHorizontalFlip" not in steps and "RandAugment" in steps
    assert steps["RandomErasing"].probability == 0.25
    # eval: the backbone's crop_pct (0.9) and interpolation (bicubic), 32 / 0.9 -> Resize(35)
    resize, centre = built["test"].transforms[:2]
    assert resize.size == 35 and resize.interpolation.value == "bicubic" and centre.size == (32, 32)
    x = built["test"](picture())
    assert tuple(x.shape) == (3, 32, 32) and x.min() < 0  # mean = std = 0.5 of the tiny ViT's tag
    defaults = build_transforms(options(model=tiny_data_config(), augment="timm", normalize="none"))
    train_steps = {type(s).__name__: s for s in defaults["train"].transforms}
    assert train_steps["RandomResizedCropAndInterpolation"].scale == tuple(TimmAugment().scale)
    assert train_steps["RandomHorizontalFlip"].p == 0.5
    y = defaults["test"](picture())
    assert y.dtype == torch.float32 and 0.0 <= float(y.min()) and float(y.max()) <= 1.0  # [0, 1] pixels


@pytest.mark.parametrize(("values", "message"), [
    ({"augment": "flip"}, "augment: 'flip' is not allowed; allowed: 'official' | 'none' | 'timm'"),
    ({"augment": "official", "timm": {"hflip": 0.0}}, "timm: options are only used with augment: timm"),
    ({"augment": "timm", "timm": {"scal": [0.5, 1]}}, "unknown key.*'scal'.*allowed: auto_augment"),
    ({"augment": "timm", "timm": {"scale": [1.0, 0.5]}}, r"timm.scale: expected \[low, high\]"),
    ({"normalize": "imagnet"}, "normalize: expected 'none' | 'imagenet' | 'inception' | 'model' | mapping"),
    ({"image_size": "big"}, "image_size: expected int | 'model'"),
])
def test_bad_transform_options_name_the_key_and_what_is_allowed(values, message):
    with pytest.raises(ConfigError, match=message):
        options(**values)


def test_model_values_without_a_backbone_config_say_so():
    with pytest.raises(ValueError, match="image_size: 'model' needs the backbone's data config"):
        build_transforms(options())
    with pytest.raises(ValueError, match="normalize: 'model' needs the backbone's data config"):
        build_transforms(options(image_size=32))


def test_grayscale_and_small_images_become_rgb_at_the_models_size(tmp_path):
    for split in ("train", "test"):
        for label in ("a", "b"):
            (tmp_path / split / label).mkdir(parents=True)
            picture(8, seed=len(label), mode="L").save(tmp_path / split / label / "0.png")
    bench = BENCHMARKS.get("image_folder")(options(root=str(tmp_path), model=tiny_data_config()), None)
    data = bench.load()
    x, _ = data.train[0]
    assert tuple(x.shape) == (3, 32, 32)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2]) and x.std() > 0
    assert data.info["transforms"]["image_size"] == 32 and data.info["transforms"]["mean"] == [0.5, 0.5, 0.5]


def load_digits_script():
    return load_benchmark_script("digits_folder")


def first_task_accuracy(config: Path, out: Path, *overrides: str) -> tuple[float, dict]:
    sets = [a for o in overrides for a in ("--set", o)]
    assert main(["train", str(config), "--out", str(out), "--quiet", "--device", "cpu", *sets]) == 0
    result = json.loads((out / "seed-1993" / "results.json").read_text())
    return result["accuracy_matrix"][0][0], result


def test_real_digits_learn_with_the_image_folder_defaults(tmp_path, capsys):
    """Real 8x8 digits upscaled to 32x32 (issue 14): the default learns, the official augmentation does not."""
    counts = load_digits_script().write_digits(tmp_path / "digits", classes=2, size=32, per_class=100)
    assert counts == {"train": 150, "test": 50}
    config = tmp_path / "digits.yaml"
    config.write_text(yaml.safe_dump({
        "benchmark": {"name": "image_folder", "class_order": "sorted", "init_classes": 2, "increment": 2,
                      "options": {"root": str(tmp_path / "digits")}},
        "backbone": {"name": "timm_vit", "options": TINY_VIT},
        "method": {"name": "linear_probe"},
        "train": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "epochs": 15, "batch_size": 16},
        "seeds": [1993], "deterministic": True,
    }))
    accuracy, result = first_task_accuracy(config, tmp_path / "run")
    assert accuracy >= 80.0, f"first-task accuracy {accuracy} on 2 digits (chance 50)"
    recorded = result["data"]["transforms"]
    assert recorded["augment"] == "none" and recorded["image_size"] == 32 and recorded["mean"] == [0.5, 0.5, 0.5]
    assert "RandomResizedCrop" not in recorded["train"] and "Resize(size=36" in recorded["train"]
    assert f"{accuracy:5.1f}" in capsys.readouterr().out
    # the check catches a transform that erases the signal: the paper benchmarks' augmentation, same run
    official, result = first_task_accuracy(config, tmp_path / "official", "benchmark.options.augment=official")
    assert "RandomResizedCrop" in result["data"]["transforms"]["train"]
    assert official <= accuracy - 15.0, (official, accuracy)
