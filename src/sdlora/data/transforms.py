"""Image transforms of every image benchmark: augmentation, size and normalisation as visible options.

`augment` picks the training pipeline from `AUGMENTS` (a registry of builders, one per name):

- `official`: the released SD-LoRA / PILOT code. Train RandomResizedCrop(size, scale 0.05-1, ratio 3/4-4/3)
  -> RandomHorizontalFlip -> ToTensor; eval Resize(size * 256/224, bicubic) -> CenterCrop(size) -> ToTensor.
- `none`: no augmentation; training uses the eval transform (resize + centre crop), so nothing about the
  data's invariances is assumed (flips and small crops destroy digits, text, centred objects).
- `timm`: `timm.data.create_transform` with the options in `timm` (scale, ratio, hflip, auto_augment,
  re_prob, ...); interpolation and crop_pct default to the backbone's pretrained config.

`normalize`: `none` ([0, 1] pixels, as the official code, although the augreg weights expect
mean = std = 0.5), `imagenet` / `inception`, `model` (the backbone's own mean/std from timm's pretrained
config), or explicit `{mean: [...], std: [...]}`. `image_size: model` takes the backbone's input size.
`model` values need the backbone's data config, bound with `TransformOptions.bind_model` by the engine.
Images reach the transforms as RGB (`open_rgb` converts grayscale, palette and RGBA files), and every
pipeline resizes to `image_size`, so small and grayscale images need nothing special.

The options (`TransformOptions`, `MeanStd`, `TimmAugment`) live in the torch-free `sdlora.data.image_options`,
so the command line checks them before torch is imported; they are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from timm.data import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_INCEPTION_MEAN,
    IMAGENET_INCEPTION_STD,
    create_transform,
)
from torchvision import transforms as T

from sdlora.data.image_options import Augment, MeanStd, Normalize, TimmAugment, TransformOptions
from sdlora.typed import to_dict

Stats = tuple[tuple[float, ...], tuple[float, ...]]

#: mean and std per named `normalize` option (None: pixels stay in [0, 1], as the official code);
#: `model` is resolved from the backbone's data config
NORMALIZATIONS: dict[str, Stats | None] = {
    "none": None,
    "imagenet": (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    "inception": (IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD),  # mean = std = 0.5
}

TRAIN_SCALE = (0.05, 1.0)
TRAIN_RATIO = (3.0 / 4.0, 4.0 / 3.0)


@dataclass
class Resolved:
    """Transform settings with every `model` value replaced by the backbone's."""

    augment: str
    image_size: int
    stats: Stats | None
    interpolation: str
    crop_pct: float
    timm: TimmAugment | None


def resolve_transforms(options: TransformOptions) -> Resolved:
    """The settings of `options` with `model` replaced by the backbone's input size, mean/std, interpolation and
    crop_pct (its bound data config, `TransformOptions.bind_model`)."""
    size = options.image_size
    if size == "model":
        height, width = options.model_value("input_size", "image_size")[-2:]
        if height != width:
            raise ValueError(f"image_size: model: the backbone's input is {height}x{width}; set a square size")
        size = int(height)
    stats: Stats | None
    if isinstance(options.normalize, MeanStd):
        stats = (tuple(options.normalize.mean), tuple(options.normalize.std))
    elif options.normalize == "model":
        stats = (tuple(options.model_value("mean", "normalize")), tuple(options.model_value("std", "normalize")))
    else:
        stats = NORMALIZATIONS[options.normalize]
    tim = options.timm if options.timm is not None or options.augment != "timm" else TimmAugment()
    interpolation = (tim and tim.interpolation) or options.model_data.get("interpolation", "bilinear")
    crop_pct = (tim and tim.crop_pct) or options.model_data.get("crop_pct", 224 / 256)
    return Resolved(options.augment, int(size), stats, interpolation, float(crop_pct), tim)


def _finish(steps: list, stats: Stats | None) -> T.Compose:
    steps.append(T.ToTensor())
    if stats is not None:
        steps.append(T.Normalize(mean=stats[0], std=stats[1]))
    return T.Compose(steps)


def _stats(normalize: str) -> Stats | None:
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize: {normalize!r} is not allowed; allowed: {', '.join(NORMALIZATIONS)}")
    return NORMALIZATIONS[normalize]


def official_train(image_size: int, stats: Stats | None) -> T.Compose:
    """RandomResizedCrop(scale 0.05-1, ratio 3/4-4/3) + horizontal flip + ToTensor (+ Normalize)."""
    return _finish([T.RandomResizedCrop(image_size, scale=TRAIN_SCALE, ratio=TRAIN_RATIO),
                    T.RandomHorizontalFlip(p=0.5)], stats)


def official_eval(image_size: int, stats: Stats | None) -> T.Compose:
    """Resize(size * 256/224, bicubic) + CenterCrop(size) + ToTensor (+ Normalize)."""
    return _finish([T.Resize(eval_resize(image_size), interpolation=T.InterpolationMode.BICUBIC),
                    T.CenterCrop(image_size)], stats)


def train_transform(image_size: int = 224, normalize: str = "none") -> T.Compose:
    """The official training transform with a named normalisation."""
    return official_train(image_size, _stats(normalize))


def eval_resize(image_size: int) -> int:
    """The resize before the centre crop: 256 for 224, in proportion otherwise."""
    return int(image_size * 256 / 224)


def eval_transform(image_size: int = 224, normalize: str = "none") -> T.Compose:
    """The official evaluation transform with a named normalisation."""
    return official_eval(image_size, _stats(normalize))


def _official(r: Resolved) -> dict[str, T.Compose]:
    return {"train": official_train(r.image_size, r.stats), "test": official_eval(r.image_size, r.stats)}


def _none(r: Resolved) -> dict[str, T.Compose]:
    evaluation = official_eval(r.image_size, r.stats)
    return {"train": evaluation, "test": evaluation}


def _timm(r: Resolved) -> dict[str, T.Compose]:
    # normalize=False in timm gives uint8 tensors; identity stats keep [0, 1] pixels and random erasing
    mean, std = r.stats if r.stats is not None else ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    a = r.timm or TimmAugment()
    common: dict[str, Any] = {"input_size": r.image_size, "interpolation": r.interpolation, "mean": mean,
                              "std": std}
    # scale, ratio: [low, high] pairs (checked by TimmAugment)
    train = create_transform(is_training=True, scale=(a.scale[0], a.scale[1]), ratio=(a.ratio[0], a.ratio[1]),
                             hflip=a.hflip, vflip=a.vflip, color_jitter=a.color_jitter, auto_augment=a.auto_augment,
                             re_prob=a.re_prob, re_mode=a.re_mode, re_count=a.re_count, **common)
    return {"train": train, "test": create_transform(is_training=False, crop_pct=r.crop_pct, **common)}


#: augment name -> builder of the train and test transforms
AUGMENTS: dict[str, Callable[[Resolved], dict[str, T.Compose]]] = {
    "official": _official, "none": _none, "timm": _timm,
}


def build_transforms(options: TransformOptions) -> dict[str, T.Compose]:
    """`{"train": ..., "test": ...}` for the options (the test transform also serves val)."""
    resolved = resolve_transforms(options)
    return AUGMENTS[resolved.augment](resolved)


def describe(options: TransformOptions, transforms: dict[str, T.Compose] | None = None) -> dict[str, Any]:
    """The resolved transforms as text and values, recorded in results.json."""
    r = resolve_transforms(options)
    built = transforms if transforms is not None else AUGMENTS[r.augment](r)
    return {"augment": r.augment, "normalize": to_dict(options.normalize), "image_size": r.image_size,
            "mean": None if r.stats is None else list(r.stats[0]), "std": None if r.stats is None else list(r.stats[1]),
            "train": repr(built["train"]), "test": repr(built["test"])}


TRANSFORM_KEYS = ("image_size", "normalize", "augment", "timm")


def transform_spec(options: TransformOptions) -> dict[str, Any]:
    """What rebuilds these transforms anywhere (a run folder, an export): the transform options and the
    backbone data config their `model` values were bound to."""
    plain = to_dict(options)
    return {"options": {k: plain[k] for k in TRANSFORM_KEYS}, "model_data": dict(options.model_data)}


def options_from_spec(spec: dict[str, Any], model_data: dict[str, Any] | None = None) -> TransformOptions:
    """The bound options of a `transform_spec`; `model_data` fills in a spec recorded without one (exports
    written before specs were: `{"image_size": ..., "normalize": ...}`)."""
    from sdlora.typed import from_dict

    raw = spec.get("options", {k: v for k, v in spec.items() if k in TRANSFORM_KEYS})
    options = from_dict(TransformOptions, raw, "preprocess")
    options.bind_model(spec.get("model_data") or model_data or {})
    return options


def transforms_from_spec(spec: dict[str, Any], model_data: dict[str, Any] | None = None) -> dict[str, T.Compose]:
    """The train / test transforms of a `transform_spec` (see `options_from_spec`)."""
    return build_transforms(options_from_spec(spec, model_data))


def timm_eval_config(options: TransformOptions) -> dict[str, Any]:
    """The timm data config whose `create_transform(**config)` is this evaluation transform: timm resizes to
    floor(size / crop_pct), so the official Resize(int(size * 256 / 224)) takes crop_pct = size / (resize + 0.5)
    (size / resize itself can floor one pixel short)."""
    r = resolve_transforms(options)
    if r.augment == "timm":
        crop_pct, interpolation = r.crop_pct, r.interpolation
    else:
        crop_pct, interpolation = r.image_size / (eval_resize(r.image_size) + 0.5), "bicubic"
    mean, std = r.stats if r.stats is not None else ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    return {"input_size": (3, r.image_size, r.image_size), "crop_pct": crop_pct, "interpolation": interpolation,
            "mean": tuple(mean), "std": tuple(std), "crop_mode": "center"}


__all__ = [
    "AUGMENTS", "TRANSFORM_KEYS", "Augment", "MeanStd", "NORMALIZATIONS", "Normalize", "Resolved", "TimmAugment",
    "TransformOptions",
    "build_transforms", "describe", "eval_resize", "eval_transform", "official_eval", "official_train",
    "options_from_spec", "resolve_transforms", "timm_eval_config", "train_transform", "transform_spec",
    "transforms_from_spec",
]
