"""The options of image benchmarks, with no torch: transforms (size, normalisation, augmentation) and image files.

`sdlora.data.transforms` builds the pipelines from `TransformOptions` (`resolve_transforms`, `AUGMENTS`) and
`sdlora.data.image_folder` reads the files; the options live here, apart from torchvision and timm, so the command
line validates a config's `benchmark.options` before importing them (`sdlora.data.benchmarks.options`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from sdlora.typed import ReadWhen

#: named normalisations (`sdlora.data.transforms.NORMALIZATIONS`, plus `model`: the backbone's own mean/std)
Normalize = Literal["none", "imagenet", "inception", "model"]
#: training augmentations (`sdlora.data.transforms.AUGMENTS`)
Augment = Literal["official", "none", "timm"]
#: what a benchmark does with an unreadable image (`sdlora.data.image_folder`)
OnCorrupt = Literal["skip", "stop"]
#: random erasing's settings, read only when it erases
ERASING = ReadWhen("re_prob", (0, 0.0), negate=True)


@dataclass
class MeanStd:
    """Explicit normalisation statistics, one value per channel."""

    mean: list[float]
    std: list[float]

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"normalize: mean and std need 3 values each, std > 0; got {self.mean}, {self.std}")


@dataclass
class TimmAugment:
    """Arguments of `timm.data.create_transform` (training side); the defaults are timm's own."""

    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # area range of the random crop
    ratio: list[float] = field(default_factory=lambda: [3.0 / 4.0, 4.0 / 3.0])  # aspect-ratio range
    hflip: float = 0.5  # horizontal flip probability (0 for text, digits, anything orientation-sensitive)
    vflip: float = 0.0
    color_jitter: Annotated[float, ReadWhen("auto_augment", (None,))] = 0.4  # timm ignores it beside auto_augment
    auto_augment: str | None = None  # e.g. "rand-m9-mstd0.5-inc1" (RandAugment), "augmix-m5-w4-d2"
    re_prob: float = 0.0  # random erasing probability
    re_mode: Annotated[str, ERASING] = "const"
    re_count: Annotated[int, ERASING] = 1
    interpolation: str | None = None  # None: the backbone's (bicubic for ViTs), else timm's "bilinear"
    crop_pct: float | None = None  # eval centre-crop fraction; None: the backbone's, else 224/256

    def __post_init__(self) -> None:
        for name in ("scale", "ratio"):
            value = getattr(self, name)
            if len(value) != 2 or value[0] > value[1] or value[0] <= 0:
                raise ValueError(f"timm.{name}: expected [low, high] with 0 < low <= high, got {value}")


@dataclass
class TransformOptions:
    """Benchmark options shared by every image benchmark."""

    image_size: int | Literal["model"] = 224  # crop size; `model`: the backbone's input size
    normalize: Normalize | MeanStd = "none"  # none (official code: [0, 1] pixels) | imagenet | inception | model
    augment: Augment = "official"  # training augmentation: official | none | timm
    timm: TimmAugment | None = None  # create_transform arguments, only with augment: timm
    #: the backbone's timm data config (input_size, mean, std, interpolation, crop_pct); not a config key
    model_data: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.image_size, int) and self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if self.timm is not None and self.augment != "timm":
            raise ValueError(f"timm: options are only used with augment: timm (augment is {self.augment!r})")

    def needs_model(self) -> bool:
        """Whether any value comes from the backbone (`model`, or timm's interpolation and crop_pct)."""
        return "model" in (self.image_size, self.normalize) or self.augment == "timm"

    def bind_model(self, data_config: dict[str, Any]) -> None:
        """Give `model` values their meaning: the backbone's timm data config (`resolve_model_data_config`)."""
        self.model_data = dict(data_config)

    def model_value(self, key: str, option: str) -> Any:
        """The bound data config's `key`, for the option `option` set to `model`."""
        if key not in self.model_data:
            raise ValueError(f"benchmark.options.{option}: 'model' needs the backbone's data config ({key}), and "
                             "none is bound (a timm backbone gives one; else set explicit values)")
        return self.model_data[key]


@dataclass
class FileOptions(TransformOptions):
    """Options of every benchmark that reads image files."""

    on_corrupt: OnCorrupt = "stop"  # stop the run with the path, or skip the file with a warning


@dataclass
class FolderSplitOptions(FileOptions):
    """Pre-split trees: `<root>/<train_dir>/<class>/*`, `<root>/<test_dir>/<class>/*` (PILOT layout)."""

    train_dir: str = "train"
    test_dir: str = "test"
    val_dir: str | None = None  # optional validation split, same layout


@dataclass
class NamedFolderOptions(FolderSplitOptions):
    """A pre-split tree in `<data_root>/<folder>` (an absolute `folder` is used as it is)."""

    folder: str = ""
