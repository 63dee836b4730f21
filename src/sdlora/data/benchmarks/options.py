"""The options of every registered benchmark, with no torch or numpy: `sdlora train` validates them before
importing either.

Each benchmark's class says `Options = ...Options` (one of these); see `sdlora.methods.options` for how the command
line's early checks reach them. Image benchmarks share the transform and file options of `sdlora.data.image_options`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from sdlora.data.image_options import (
    Augment,
    FileOptions,
    FolderSplitOptions,
    MeanStd,
    NamedFolderOptions,
    Normalize,
    TransformOptions,
)
from sdlora.typed import PositiveInt, ReadWhen

#: the six DomainNet domains (`sdlora.data.benchmarks.domainnet`), all mixed by default
DOMAINS = ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"]


@dataclass
class Clinc150Options:
    """CLINC150 (`sdlora.data.benchmarks.clinc150`)."""

    verify_checksum: bool = True
    include_val_in_train: bool = False  # then no `val` split is exposed
    max_per_class: int | None = None  # first N queries per intent of every split (smoke runs, tests)
    download: bool = True  # fetch missing files from clinc/oos-eval when online

    def __post_init__(self) -> None:
        if self.max_per_class is not None and self.max_per_class < 1:
            raise ValueError(f"max_per_class must be positive, got {self.max_per_class}")


@dataclass
class Hwu64Options:
    """HWU64 (`sdlora.data.benchmarks.hwu64`): its val split is held out of train.csv."""

    val_fraction: float = 0.1  # of every intent's train.csv rows, held out as `val`
    split_seed: Annotated[int, ReadWhen("val_fraction", (0, 0.0), negate=True)] = 0  # picks them (not the run's seed)
    verify_checksum: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass
class TextFilesOptions:
    """Your own text files (`sdlora.data.benchmarks.text_files`): CSV / TSV / JSON lines of (text, label)."""

    train_file: str  # relative to the data root, or absolute
    test_file: str
    val_file: str | None = None
    format: Literal["auto", "csv", "tsv", "jsonl"] = "auto"  # auto: from the file extension
    text_column: str = "text"
    label_column: str = "label"


@dataclass
class SyntheticOptions:
    """Random tensors whose mean depends on the class (`sdlora.data.benchmarks.synthetic`)."""

    num_classes: PositiveInt = 6
    train_per_class: PositiveInt = 8
    test_per_class: PositiveInt = 4
    shape: list[int] = field(default_factory=lambda: [3, 32, 32])
    separation: float = 1.0  # how far apart the class means are
    seed: int = 0  # the data itself does not depend on the run's seed


@dataclass
class CIFAR100Options(TransformOptions):
    """CIFAR-100 through torchvision (`sdlora.data.benchmarks.cifar100`)."""

    folder: str = "cifar100"  # torchvision's root, under the data root (or absolute)
    download: bool = True  # fetch the archive when it is missing (needs the internet)


@dataclass
class CUB200Options(NamedFolderOptions):
    """CUB-200 (`sdlora.data.benchmarks.cub200`)."""

    folder: str = "cub"


@dataclass
class ImageNetROptions(NamedFolderOptions):
    """ImageNet-R (`sdlora.data.benchmarks.imagenet_r`)."""

    folder: str = "imagenet-r"


@dataclass
class ImageNetAOptions(NamedFolderOptions):
    """ImageNet-A (`sdlora.data.benchmarks.imagenet_a`)."""

    folder: str = "imagenet-a"


@dataclass
class DomainNetOptions(FileOptions):
    """DomainNet (`sdlora.data.benchmarks.domainnet`): which domains, where the split lists are."""

    folder: str = "domainnet"  # under the data root (or absolute); list paths are relative to it
    domains: list[str] = field(default_factory=lambda: list(DOMAINS))
    list_pattern: str = "{domain}_{split}.txt"  # split list file names inside `folder`

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.domains:
            raise ValueError("domains: at least one domain is required")


@dataclass
class ImageFolderOptions(FolderSplitOptions):
    """Your own image folders (`sdlora.data.benchmarks.image_folder_benchmark`); no assumption about the images."""

    root: str | None = None  # the tree; relative to the data root when one is set, else to the cwd
    image_size: int | Literal["model"] = "model"  # the backbone's input size
    normalize: Normalize | MeanStd = "model"  # the backbone's pretrained mean/std
    augment: Augment = "none"  # no assumption about the images' invariances (see docs/vision.md)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.root:
            raise ValueError("root is required: the folder holding the train/ and test/ class folders")
