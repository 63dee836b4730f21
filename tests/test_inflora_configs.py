"""The InfLoRA vision configs pin the settings of the InfLoRA release (Liang and Li, CVPR 2024) per benchmark
and the InfLoRA numbers of SD-LoRA's Tables 2, 3 and 6; a wrong edit of any of them fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdlora.config import load_config
from sdlora.data.transforms import TransformOptions, build_transforms
from sdlora.engine.build import resolve_classifier
from sdlora.methods.inflora import InfLoRA
from sdlora.typed import from_dict

FOLDER = Path(__file__).resolve().parents[1] / "configs" / "vision" / "inflora"

ADAM_INR = {"optimizer": "adam", "lr": 5e-4, "head_lr": None, "epochs": 50, "scheduler": "quarter_cosine",
            "rank": 10, "threshold": 0.98}
#: file -> (benchmark, classes per task, InfLoRA release setting, published Acc, stderr, AAA, stderr)
EXPECTED = {
    "imagenet_r_5": ("imagenet_r", 40, ADAM_INR, (76.95, 0.23, 81.81, 0.14)),
    "imagenet_r_10": ("imagenet_r", 20, ADAM_INR, (74.75, 0.64, 80.67, 0.55)),
    "imagenet_r_20": ("imagenet_r", 10, ADAM_INR, (69.89, 0.56, 76.68, 0.57)),
    "imagenet_a_10": ("imagenet_a", 20, ADAM_INR, (49.20, 1.12, 60.92, 0.61)),
    "cub200_10": ("cub200", 20, ADAM_INR, (70.82, 0.23, 81.39, 0.14)),
    "cifar100_10": ("cifar100", 10, {**ADAM_INR, "epochs": 20, "threshold": 0.95}, (86.75, 0.35, 91.72, 0.15)),
    "domainnet_5": ("domainnet", 69, {"optimizer": "sgd", "lr": 0.005, "head_lr": 0.01, "epochs": 5,
                                      "scheduler": "multistep", "rank": 30, "threshold": 0.95},
                    (71.59, 0.23, 78.29, 0.50)),
}


def test_every_inflora_setting_is_shipped():
    assert sorted(p.stem for p in FOLDER.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_inflora_config_pins_the_release_settings_and_published_numbers(stem):
    cfg = load_config(FOLDER / f"{stem}.yaml")
    benchmark, per_task, setting, published = EXPECTED[stem]
    opts = cfg.method.options
    assert cfg.method.name == "inflora" and cfg.name == f"inflora-{stem.replace('_', '-')}"
    assert (cfg.benchmark.name, cfg.benchmark.init_classes, cfg.benchmark.increment) == (benchmark, per_task, per_task)
    assert cfg.benchmark.class_order == "sorted"  # the release's jsons: "shuffle": false
    classifier = resolve_classifier(cfg)
    got = {"optimizer": cfg.train.optimizer, "lr": cfg.train.lr, "head_lr": classifier.head_lr,
           "epochs": cfg.train.epochs, "scheduler": cfg.train.scheduler, "rank": opts["rank"],
           "threshold": opts["threshold"]}
    assert got == pytest.approx(setting)
    assert opts["threshold_end"] == 1.0 and opts.get("spectrum", "official") == "official"
    assert cfg.train.weight_decay == 0.0 and cfg.train.batch_size == 128 and classifier.loss == "current"
    assert cfg.train.first_task.lr is None and cfg.train.first_task.epochs is None  # init_lr = lrate etc.
    if cfg.train.optimizer == "adam":
        assert list(cfg.train.betas) == [0.9, 0.999]
    else:
        assert cfg.train.momentum == 0.9 and cfg.train.milestones == [4] and cfg.train.gamma == 0.1
    assert cfg.backbone.options["model"] == "vit_base_patch16_224.augreg_in21k"
    assert cfg.benchmark.options["normalize"] == "none"
    assert cfg.seeds == [0, 1, 2, 3, 4]
    p = cfg.published
    assert (p["final_accuracy"], p["final_accuracy_stderr"], p["average_incremental_accuracy"],
            p["average_incremental_accuracy_stderr"]) == pytest.approx(published)
    assert "Table" in cfg.source and "InfLoRA" in cfg.source
    assert ("our choice" in cfg.source) == (stem in ("imagenet_a_10", "cub200_10"))


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_inflora_config_transforms_are_the_releases(stem):
    """ImageNet-R / CIFAR-100 / DomainNet: torchvision's RandomResizedCrop(224) (scale 0.08-1, bilinear) and a
    bilinear test resize (256 + centre crop; CIFAR 224); ImageNet-A / CUB: the release's PILOT pipeline."""
    cfg = load_config(FOLDER / f"{stem}.yaml")
    options = from_dict(TransformOptions, {k: v for k, v in cfg.benchmark.options.items()
                                           if k in ("image_size", "normalize", "augment", "timm")})
    built = build_transforms(options)
    train, test = repr(built["train"]), repr(built["test"])
    if stem in ("imagenet_a_10", "cub200_10"):
        assert options.augment == "official"
        assert "scale=(0.05, 1.0)" in train and "bicubic" in test.lower() and "Resize(size=256" in test
        return
    assert "scale=(0.08, 1.0)" in train and "interpolation=bilinear" in train and "RandomHorizontalFlip" in train
    assert "brightness=None" in train or "ColorJitter" not in train
    assert f"Resize(size={224 if stem == 'cifar100_10' else 256}, interpolation=bilinear" in test
    assert "mean=tensor([0., 0., 0.])" in test and "std=tensor([1., 1., 1.])" in test


def test_inflora_default_threshold_is_the_releases_cifar_domainnet_setting():
    options = InfLoRA.Options()
    assert (options.threshold, options.threshold_end, options.rank) == (0.95, 1.0, 10)
