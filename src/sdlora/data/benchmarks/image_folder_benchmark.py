"""Any pre-split ImageFolder tree: `<root>/<train_dir>/<class>/*` and `<root>/<test_dir>/<class>/*`.

Defaults differ from the paper's benchmarks because nothing is known about the user's images: no
augmentation (`augment: none`; flips and the official 5 %-area crops erase digits, text and centred
objects), the backbone's own input size and mean/std (`model`), which is what its weights expect.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sdlora.data.image_folder import FolderSplitOptions, SplitFolderBenchmark
from sdlora.data.transforms import Augment, MeanStd, Normalize
from sdlora.registry import BENCHMARKS


@BENCHMARKS.register("image_folder")
class ImageFolderBenchmark(SplitFolderBenchmark):
    """Your own images: train/test class folders; labels are the sorted class folder names of train."""

    title = "image folder"

    @dataclass
    class Options(FolderSplitOptions):
        root: str | None = None  # the tree; relative to the data root when one is set, else to the cwd
        image_size: int | Literal["model"] = "model"  # the backbone's input size
        normalize: Normalize | MeanStd = "model"  # the backbone's pretrained mean/std
        augment: Augment = "none"  # no assumption about the images' invariances (see docs/vision.md)

        def __post_init__(self) -> None:
            super().__post_init__()
            if not self.root:
                raise ValueError("root is required: the folder holding the train/ and test/ class folders")

    options: Options

    def location(self) -> Path:
        assert self.options.root is not None  # required by Options.__post_init__
        root = Path(self.options.root).expanduser()
        return root if root.is_absolute() or self.data_root is None else self.data_root / root
