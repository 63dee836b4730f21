"""CUB-200-2011 (200 bird species, 11,788 images) as a pre-split `train/` and `test/` tree."""

from __future__ import annotations

from sdlora.data.benchmarks.options import CUB200Options
from sdlora.data.image_folder import SplitFolderBenchmark
from sdlora.registry import BENCHMARKS


@BENCHMARKS.register("cub200")
class CUB200(SplitFolderBenchmark):
    """CUB-200: `<data_root>/cub/{train,test}/<class>/*` (PILOT archive or the official split)."""

    title = "CUB-200"

    Options = CUB200Options
