"""ImageNet-A (200 classes, 7,500 natural adversarial images) as the pre-split tree of PILOT."""

from __future__ import annotations

from sdlora.data.benchmarks.options import ImageNetAOptions
from sdlora.data.image_folder import SplitFolderBenchmark
from sdlora.registry import BENCHMARKS


@BENCHMARKS.register("imagenet_a")
class ImageNetA(SplitFolderBenchmark):
    """ImageNet-A: `<data_root>/imagenet-a/{train,test}/<wnid>/*` (PILOT archive; some classes are tiny)."""

    title = "ImageNet-A"

    Options = ImageNetAOptions
