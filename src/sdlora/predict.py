"""`sdlora.load(path)`: a ready classifier from a run folder or an export folder; `.predict(inputs)`.

    clf = sdlora.load("runs/clinc150/seed-1993")          # or an export folder (--format timm / hf)
    clf.predict(["book a table for two"], top_k=3)        # [[("restaurant_reservation", 0.91), ...]]

Scores: softmax over the logits for a linear head and for the LDA head (`normalized_linear`: its logits are log
posteriors up to a constant); the cosine similarity for a prototype (cosine) head.
Sources are found through `SOURCES` (a registry: run folder, timm export, hf export).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sdlora.backbones.base import move_to
from sdlora.export.common import MANIFEST, NORMALIZED_KINDS

TopK = list[tuple[str, float]]


@dataclass
class Classifier:
    """features(collated batch) -> [N, D]; a linear or cosine head over `class_names`."""

    backbone: Any  # an sdlora Backbone (tokenize / collate, forward)
    features_fn: Callable[[Any], Tensor]
    weight: Tensor
    bias: Tensor
    kind: str  # a key of sdlora.export.common.CLASSIFIER_KINDS: "linear" | "cosine" | "normalized_linear"
    class_names: list[str]
    preprocess: Callable[[Any], Tensor] | None = None  # image -> tensor (image models)

    @property
    def takes(self) -> str:
        """"text" or "images"."""
        return "text" if hasattr(self.backbone, "tokenize") else "images"

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
        if isinstance(item, Tensor):
            return item
        from sdlora.data.image_folder import open_rgb

        image = open_rgb(item) if isinstance(item, str | Path) else item
        assert self.preprocess is not None
        return self.preprocess(image)

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

    def predict(self, items: Sequence[Any], top_k: int = 1, batch_size: int = 64) -> list[TopK]:
        """Per input, the `top_k` (class name, score) pairs, best first."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        scores = self.scores(self.logits(items, batch_size))
        values, index = scores.topk(min(top_k, len(self.class_names)), dim=-1)
        return [[(self.class_names[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist(), strict=True)]
                for vs, ix in zip(values, index, strict=True)]


# -- sources ---------------------------------------------------------------------------------------


def _image_preprocess(options: dict[str, Any], backbone: Any) -> Callable[[Any], Tensor] | None:
    """The benchmark's evaluation transform; image size from its options, else the model's input size."""
    from sdlora.data.transforms import eval_transform

    model = getattr(backbone, "model", None)
    if getattr(model, "pretrained_cfg", None) is None:
        return None
    patch_embed = getattr(model, "patch_embed", None)
    model_size = getattr(patch_embed, "img_size", None) or model.pretrained_cfg.get("input_size", (224,))[-1:]
    size = int(options.get("image_size", model_size[-1]))
    return eval_transform(size, str(options.get("normalize", "none")))


def load_run(path: Path, seed: int | None = None, device: str = "cpu") -> Classifier:
    from sdlora.engine.restore import restore_run
    from sdlora.export.common import ExportSource

    run = restore_run(path, seed, device)
    source = ExportSource.from_run(run)
    method = run.method.eval()
    return Classifier(method.backbone, method.features, source.head_weight.to(device),
                      source.head_bias.to(device), source.classifier, source.class_names,
                      _image_preprocess(run.cfg.benchmark.options, method.backbone))


def _backbone(manifest: dict[str, Any], options: dict[str, Any]) -> Any:
    from sdlora.config import resolve_options
    from sdlora.registry import BACKBONES

    entry = BACKBONES.get(manifest["backbone_config"]["name"])
    return entry(resolve_options(entry.Options, options, "backbone.options")).eval()


def load_timm_export(path: Path, manifest: dict[str, Any], device: str = "cpu") -> Classifier:
    from safetensors.torch import load_file

    options = {**manifest["backbone_config"]["options"], "model": manifest["timm_tag"], "pretrained": False,
               "pretrained_file": str(path / manifest["weights"])}
    backbone = _backbone(manifest, options).to(device)
    state = load_file(str(path / manifest["weights"]))
    return Classifier(backbone, backbone, state["head.weight"].to(device), state["head.bias"].to(device),
                      manifest["classifier"], manifest["class_names"],
                      _image_preprocess(manifest["preprocess"], backbone))


def load_hf_export(path: Path, manifest: dict[str, Any], device: str = "cpu") -> Classifier:
    from safetensors.torch import load_file

    keep = ("pooling", "max_length", "normalize")
    options = {k: v for k, v in manifest["backbone_config"]["options"].items() if k in keep}
    backbone = _backbone(manifest, {**options, "model": str(path)}).to(device)
    head = load_file(str(path / manifest["classifier_file"]))
    return Classifier(backbone, backbone, head["weight"].to(device), head["bias"].to(device),
                      manifest["classifier"], manifest["class_names"])


def load_peft_export(path: Path, manifest: dict[str, Any], device: str = "cpu") -> Classifier:
    raise ValueError(f"{path} is a PEFT adapter (it needs its base model): load it with "
                     "peft.PeftModel.from_pretrained, or sdlora.load the run or a --format timm / hf export")


#: manifest format -> loader of that export folder
SOURCES: dict[str, Callable[[Path, dict[str, Any], str], Classifier]] = {
    "timm": load_timm_export,
    "hf": load_hf_export,
    "peft": load_peft_export,
}


def load(path: str | Path, seed: int | None = None, device: str = "cpu") -> Classifier:
    """A classifier from a run folder (or one seed of it) or an sdlora export folder."""
    path = Path(path)
    manifest_file = path / MANIFEST
    if manifest_file.is_file():
        manifest = json.loads(manifest_file.read_text())
        return SOURCES[manifest["format"]](path, manifest, device)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    return load_run(path, seed, device)
