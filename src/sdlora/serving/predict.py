"""`sdlora.load(path)`: a ready classifier from a run folder or an export folder; `.predict(inputs)`.

    clf = sdlora.load("runs/clinc150/seed-1993")          # or an export folder (--format timm / hf)
    clf.predict(["book a table for two"], top_k=3)        # [[("restaurant_reservation", 0.91), ...]]

The classifier is `sdlora.export.classifier.Classifier`. An export folder is loaded by its format's own `load`
(`sdlora.export.EXPORT_FORMATS`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from sdlora.export.classifier import Classifier, TopK, UnreadableInput, image_preprocess
from sdlora.export.common import MANIFEST

__all__ = ["Classifier", "TopK", "UnreadableInput", "load", "load_run"]


def load_run(path: Path, seed: int | None = None, device: str = "cpu") -> Classifier:
    from sdlora.engine.build import run_preprocess
    from sdlora.engine.restore import restore_run
    from sdlora.export.common import ExportSource

    run = restore_run(path, seed, device)
    source = ExportSource.from_run(run)
    method = run.method.eval()
    features_fn: Callable[[Any], Tensor] = method.features
    kind = source.classifier
    head = method.class_head
    if head is not None and head.feature_map is not None:  # not linear in the feature: (W, b) apply to its lift
        def features_fn(batch: Any) -> Tensor:
            return head.lift(method.features(batch))
        kind = "linear"
    return Classifier(method.backbone, features_fn, source.head_weight.to(device),
                      source.head_bias.to(device), kind, source.class_names,
                      image_preprocess(run_preprocess(run.cfg), method.backbone))


def load(path: str | Path, seed: int | None = None, device: str = "cpu") -> Classifier:
    """A classifier from a run folder (or one seed of it) or an sdlora export folder."""
    path = Path(path)
    manifest_file = path / MANIFEST
    if manifest_file.is_file():
        from sdlora.export import EXPORT_FORMATS

        manifest = json.loads(manifest_file.read_text())
        return EXPORT_FORMATS.get(manifest["format"]).load(path, manifest, device)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    return load_run(path, seed, device)
