"""Write scikit-learn's digits (1,797 real 8x8 grayscale images) as PNG class folders: a small real-image tree.

`python benchmarks/digits_folder.py OUT [--classes 10] [--size 32] [--test-fraction 0.25]` writes
`OUT/train/<digit>/*.png` and `OUT/test/<digit>/*.png` (grayscale, upscaled with nearest neighbour, a
stratified split fixed by `--seed`), the layout of the `image_folder` benchmark. Tests use `write_digits`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(root: str | Path, classes: int = 10, size: int = 32, per_class: int | None = None,
                 test_fraction: float = 0.25, seed: int = 0) -> dict[str, int]:
    """Write the tree; returns the number of images per split. `per_class` caps the images of each class."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    root = Path(root)
    counts = {"train": 0, "test": 0}
    for label in range(classes):
        index = rng.permutation(np.flatnonzero(digits.target == label))[:per_class]
        n_test = max(1, round(len(index) * test_fraction))
        for rank, i in enumerate(index):
            split = "test" if rank < n_test else "train"
            pixels = (digits.images[i] * (255.0 / 16.0)).round().astype(np.uint8)  # values are 0..16
            folder = root / split / f"digit_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).resize((size, size), Image.NEAREST).save(folder / f"{i:04d}.png")
            counts[split] += 1
    return counts


def main(argv: list[str] | None = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--per-class", type=int, default=None)
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    counts = write_digits(args.out, args.classes, args.size, args.per_class, args.test_fraction, args.seed)
    print(f"wrote {counts['train']} train and {counts['test']} test images to {args.out}")
    return counts


if __name__ == "__main__":
    main()
