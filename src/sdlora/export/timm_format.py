"""`--format timm`: timm's own folder (`save_for_hf`: model.safetensors with plain timm keys + head, config.json).

Loads with `timm.create_model("local-dir:FOLDER")` or, by architecture name, with
`timm.create_model(TAG, pretrained=True, num_classes=C, pretrained_cfg_overlay=dict(file=..., num_classes=C))`;
timm loads the file with strict=True. A cosine (prototype) classifier becomes a linear head of unit-norm class
means on the un-normalised feature: same argmax, logits scaled by ||f|| per sample. The LDA head
(`normalized_linear`: normalize(f) W^T + b) has no such form, its bias would change the argmax: refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
from timm.models import save_for_hf

from sdlora.export.common import EXPORT_FORMATS, ExportFormat, ExportSource

WEIGHTS = "model.safetensors"


def timm_classifier(source: ExportSource) -> Any:
    """A plain timm model of the run's architecture with the merged weights and the classifier as `head`."""
    tag = getattr(source.backbone, "tag", None)
    if tag is None:
        raise ValueError(f"--format timm needs a timm backbone, this run uses {source.backbone_config.get('name')!r}"
                         "; use --format hf")
    if source.classifier == "normalized_linear":
        raise ValueError("a timm head applies W to the un-normalised feature, but this run's LDA head is "
                         "normalize(f) W^T + b (the bias makes the argmax differ): use sdlora.load on the run folder, "
                         "or the single-file export (sdlora export RUN --out FILE.safetensors)")
    kwargs = dict(source.backbone.options.model_kwargs)
    model = timm.create_model(tag, pretrained=False, num_classes=source.num_classes, **kwargs)
    head = model.get_classifier()
    prefix = next(k for k, v in model.named_modules() if v is head)
    state = {**source.merged_backbone, f"{prefix}.weight": source.head_weight, f"{prefix}.bias": source.head_bias}
    model.load_state_dict(state, strict=True)
    return model.eval()


def write_timm(source: ExportSource, folder: Path) -> dict[str, Any]:
    model = timm_classifier(source)
    kwargs = dict(source.backbone.options.model_kwargs)
    save_for_hf(model, str(folder), model_config={"label_names": source.class_names}, model_args=kwargs or None,
                safe_serialization=True)
    return {"weights": WEIGHTS, "timm_tag": source.backbone.tag, "model_kwargs": kwargs}


def timm_recipe(source: ExportSource, manifest: dict[str, Any]) -> str:
    kwargs = "".join(f", {k}={v!r}" for k, v in manifest["model_kwargs"].items())
    c = source.num_classes
    return f"""```python
import timm
model = timm.create_model("local-dir:path/to/this/folder", pretrained=True)
# or by name, through timm's usual pretrained path (strict=True):
model = timm.create_model("{manifest["timm_tag"]}", pretrained=True, num_classes={c}{kwargs},
                          pretrained_cfg_overlay=dict(file="path/to/this/folder/{WEIGHTS}", num_classes={c}))
labels = model.pretrained_cfg["label_names"]  # with local-dir:; else the classes below
```

Feed the same pixel preprocessing as the run (the image benchmark option `normalize`); the exported weights do not
change it."""


EXPORT_FORMATS.register("timm", "timm folder (save_for_hf): plain timm keys + head")(
    ExportFormat(write=write_timm, library="timm", how_to_load=timm_recipe))
