"""ImageNet-R (200 classes, 30,000 renditions) as the pre-split tree of PILOT / the official SD-LoRA code."""

from __future__ import annotations

from sdlora.data.benchmarks.options import ImageNetROptions
from sdlora.data.image_folder import SplitFolderBenchmark
from sdlora.registry import BENCHMARKS


@BENCHMARKS.register("imagenet_r")
class ImageNetR(SplitFolderBenchmark):
    """ImageNet-R: `<data_root>/imagenet-r/{train,test}/<wnid>/*` (PILOT archive: 24,000 / 6,000)."""

    title = "ImageNet-R"

    Options = ImageNetROptions
