"""Image transforms of the official SD-LoRA / PILOT code, with normalisation as a visible option.

Train: RandomResizedCrop(size, scale=(0.05, 1), ratio=(3/4, 4/3)) -> RandomHorizontalFlip -> ToTensor.
Eval:  Resize(size * 256/224, bicubic) -> CenterCrop(size) -> ToTensor.
The official code feeds [0, 1] pixels (no mean/std), although the augreg weights expect mean = std = 0.5;
`normalize: none` reproduces the published numbers, `inception` / `imagenet` add the matching Normalize.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from timm.data import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_INCEPTION_MEAN,
    IMAGENET_INCEPTION_STD,
)
from torchvision import transforms as T

Normalize = Literal["none", "imagenet", "inception"]

#: mean and std per `normalize` option (None: pixels stay in [0, 1], as the official code)
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "none": None,
    "imagenet": (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    "inception": (IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD),  # mean = std = 0.5
}

TRAIN_SCALE = (0.05, 1.0)
TRAIN_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def _finish(steps: list, normalize: str) -> T.Compose:
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize: {normalize!r} is not allowed; allowed: {', '.join(NORMALIZATIONS)}")
    steps.append(T.ToTensor())
    stats = NORMALIZATIONS[normalize]
    if stats is not None:
        steps.append(T.Normalize(mean=stats[0], std=stats[1]))
    return T.Compose(steps)


def train_transform(image_size: int = 224, normalize: str = "none") -> T.Compose:
    """RandomResizedCrop(scale 0.05-1, ratio 3/4-4/3) + horizontal flip + ToTensor (+ Normalize)."""
    return _finish([T.RandomResizedCrop(image_size, scale=TRAIN_SCALE, ratio=TRAIN_RATIO),
                    T.RandomHorizontalFlip(p=0.5)], normalize)


def eval_resize(image_size: int) -> int:
    """The resize before the centre crop: 256 for 224, in proportion otherwise."""
    return int(image_size * 256 / 224)


def eval_transform(image_size: int = 224, normalize: str = "none") -> T.Compose:
    """Resize(size * 256/224, bicubic) + CenterCrop(size) + ToTensor (+ Normalize)."""
    return _finish([T.Resize(eval_resize(image_size), interpolation=T.InterpolationMode.BICUBIC),
                    T.CenterCrop(image_size)], normalize)


@dataclass
class TransformOptions:
    """Benchmark options shared by every image benchmark."""

    image_size: int = 224  # crop size; tiny tests use e.g. 32 (resize int(32 * 256/224) before the crop)
    normalize: Normalize = "none"  # none (official code: [0, 1] pixels) | imagenet | inception (0.5, 0.5)

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")


def describe(image_size: int, normalize: str) -> dict[str, str]:
    """The transforms as text, recorded in results.json."""
    return {"train": repr(train_transform(image_size, normalize)),
            "test": repr(eval_transform(image_size, normalize))}


__all__ = [
    "NORMALIZATIONS", "Normalize", "TransformOptions", "describe", "eval_resize", "eval_transform",
    "train_transform",
]
