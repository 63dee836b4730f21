"""A classifier ready to predict: a backbone's features and a linear or cosine head over class names, with the run's
image preprocessing. `sdlora.load` gives one from a run folder (`serving.predict`) or from an export folder (each
export format's `load`).

Scores: softmax over the logits for a linear head and for the LDA head (`normalized_linear`: its logits are log
posteriors up to a constant); the cosine similarity for a prototype (cosine) head.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sdlora.devices import move_to
from sdlora.export.common import NORMALIZED_KINDS

TopK = list[tuple[str, float]]

log = logging.getLogger("sdlora")


class UnreadableInput(ValueError):
    """An input that cannot be read (a corrupt or missing image); the message names it."""


@dataclass
class Classifier:
    """features(collated batch) -> [N, D]; a linear or cosine head over `class_names`."""

    backbone: Any  # an sdlora Backbone (tokenize / collate, forward; `modality` says what it takes)
    features_fn: Callable[[Any], Tensor]
    weight: Tensor
    bias: Tensor
    kind: str  # a key of sdlora.export.common.CLASSIFIER_KINDS: "linear" | "cosine" | "normalized_linear"
    class_names: list[str]
    preprocess: Callable[[Any], Tensor] | None = None  # RGB PIL image -> tensor (image models)

    @property
    def takes(self) -> str:
        """"text" or "images" (the backbone's `modality`)."""
        return self.backbone.modality

    def _batch(self, items: Sequence[Any]) -> Any:
        if self.takes == "text":
            bad = [type(x).__name__ for x in items if not isinstance(x, str)]
            if bad:
                raise ValueError(f"this model takes text (a Hugging Face encoder); got {bad[0]} inputs")
            return self.backbone.tokenize(list(items))
        if any(isinstance(x, str) for x in items) and all(not Path(x).is_file() for x in items if isinstance(x, str)):
            raise ValueError("this model takes images (a timm ViT); got text, not image paths")
        return torch.stack([self._image(x) for x in items])

    def _image(self, item: Any) -> Tensor:
        """A tensor as it is (already preprocessed); a path, PIL image of any mode or numpy array (HxW or HxWxC,
        uint8, or floats in [0, 1]) through the run's evaluation transform as RGB."""
        if isinstance(item, Tensor):
            return item
        if self.preprocess is None:
            raise ValueError("this model was trained on tensors (no image transform recorded): pass tensors")
        return self.preprocess(as_rgb(item))

    @torch.no_grad()
    def logits(self, items: Sequence[Any], batch_size: int = 64) -> Tensor:
        if isinstance(items, str | Path):
            raise ValueError("predict takes a list of inputs, not a single string / path")
        if len(items) == 0:
            return torch.zeros(0, len(self.class_names))
        device = self.weight.device
        out = []
        for start in range(0, len(items), batch_size):
            f = self.features_fn(move_to(self._batch(items[start:start + batch_size]), device)).float()
            if self.kind in NORMALIZED_KINDS:
                f = F.normalize(f, dim=-1)
            out.append(f @ self.weight.T + self.bias)
        return torch.cat(out).cpu()

    def scores(self, logits: Tensor) -> Tensor:
        return logits if self.kind == "cosine" else logits.softmax(-1)

    def predict(self, items: Sequence[Any], top_k: int = 1, batch_size: int = 64,
                on_corrupt: str = "stop") -> list[TopK]:
        """Per input, the `top_k` (class name, score) pairs, best first. An unreadable image input raises
        `UnreadableInput` naming it (`on_corrupt="stop"`), or gets an empty list (`"skip"`)."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if on_corrupt not in ("stop", "skip"):
            raise ValueError(f"on_corrupt: {on_corrupt!r} is not allowed; allowed: 'stop' | 'skip'")
        if isinstance(items, str | Path):
            raise ValueError("predict takes a list of inputs, not a single string / path")
        readable = list(range(len(items)))
        if self.takes == "images":
            readable = [i for i, x in enumerate(items) if readable_image(x, on_corrupt)]
        logits = self.logits([items[i] for i in readable], batch_size)
        # ranked by the logits: a softmax of the LDA head's large logits underflows to ties at 0.0 past the first
        index = logits.topk(min(top_k, len(self.class_names)), dim=-1).indices
        values = self.scores(logits).gather(-1, index)
        out: list[TopK] = [[] for _ in items]
        for i, vs, ix in zip(readable, values.tolist(), index.tolist(), strict=True):
            out[i] = [(self.class_names[c], float(v)) for v, c in zip(vs, ix, strict=True)]
        return out


def as_rgb(item: Any) -> Any:
    """A path, PIL image (any mode: L, P, RGBA, I;16...) or numpy array as an RGB PIL image."""
    import numpy as np
    from PIL import Image

    from sdlora.data.image_folder import READ_ERRORS, open_rgb

    if isinstance(item, str | Path):
        try:
            return open_rgb(item)
        except READ_ERRORS as err:
            raise UnreadableInput(f"unreadable image {item}: {err}") from None
    if isinstance(item, np.ndarray):
        array = item
        if array.dtype != np.uint8:
            array = (np.clip(array.astype(np.float64), 0.0, 1.0) * 255).round().astype(np.uint8)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        item = Image.fromarray(array)
    if isinstance(item, Image.Image):
        return item.convert("RGB")  # as `open_rgb` reads files, so a PIL image predicts like its file
    raise ValueError(f"cannot read a {type(item).__name__} as an image (give paths, PIL images, numpy arrays or "
                     "tensors)")


def readable_image(item: Any, on_corrupt: str) -> bool:
    """Whether an image input can be read; an unreadable path raises (`stop`) or is skipped with a warning."""
    if not isinstance(item, str | Path):
        return True
    from sdlora.data.image_folder import READ_ERRORS, verify_image

    try:
        verify_image(item)
        return True
    except READ_ERRORS as err:
        message = f"unreadable image {item}: {err}"
        if on_corrupt == "stop":
            raise UnreadableInput(message + " (--on-corrupt skip predicts the other inputs)") from None
        log.warning("skipping %s", message)
        return False


# -- sources ---------------------------------------------------------------------------------------


def image_preprocess(spec: dict[str, Any] | None, backbone: Any) -> Callable[[Any], Tensor] | None:
    """The evaluation transform of a recorded `transform_spec` (None for text models)."""
    if backbone.modality != "images" or not spec:
        return None
    from sdlora.data.transforms import transforms_from_spec

    return transforms_from_spec(spec, backbone.data_config(backbone.options))["test"]
