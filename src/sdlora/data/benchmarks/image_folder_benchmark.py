"""Any pre-split ImageFolder tree: `<root>/<train_dir>/<class>/*` and `<root>/<test_dir>/<class>/*`.

Defaults differ from the paper's benchmarks because nothing is known about the user's images: no
augmentation (`augment: none`; flips and the official 5 %-area crops erase digits, text and centred
objects), the backbone's own input size and mean/std (`model`), which is what its weights expect.
"""

from __future__ import annotations

from pathlib import Path

from sdlora.data.benchmarks.options import ImageFolderOptions
from sdlora.data.image_folder import SplitFolderBenchmark
from sdlora.registry import BENCHMARKS


@BENCHMARKS.register("image_folder")
class ImageFolderBenchmark(SplitFolderBenchmark):
    """Your own images: train/test class folders; labels are the sorted class folder names of train."""

    title = "image folder"

    Options = ImageFolderOptions

    options: ImageFolderOptions

    def location(self) -> Path:
        assert self.options.root is not None  # required by Options.__post_init__
        root = Path(self.options.root).expanduser()
        return root if root.is_absolute() or self.data_root is None else self.data_root / root
