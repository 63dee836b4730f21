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

from sdlora.export.common import EXPORT_FORMATS, ExportFormat, ExportSource, export_backbone

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
    head = model.get_classifier()  # type: ignore[operator]  # a timm model method, via nn.Module.__getattr__
    prefix = next(k for k, v in model.named_modules() if v is head)
    state = {**source.merged_backbone, f"{prefix}.weight": source.head_weight, f"{prefix}.bias": source.head_bias}
    model.load_state_dict(state, strict=True)
    return model.eval()


def write_timm(source: ExportSource, folder: Path) -> dict[str, Any]:
    """timm's folder; its pretrained_cfg describes the run's evaluation transform, so timm's own
    `resolve_model_data_config` + `create_transform` preprocess as the run did."""
    from sdlora.data.transforms import options_from_spec, timm_eval_config

    model = timm_classifier(source)
    kwargs = dict(source.backbone.options.model_kwargs)
    data_config = timm_eval_config(options_from_spec(source.preprocess)) if source.preprocess else None
    save_for_hf(model, str(folder), model_config={"label_names": source.class_names}, model_args=kwargs or None,
                safe_serialization=True, data_config=data_config)
    return {"weights": WEIGHTS, "timm_tag": source.backbone.tag, "model_kwargs": kwargs, "data_config": data_config}


def timm_recipe(source: ExportSource, manifest: dict[str, Any]) -> str:
    kwargs = "".join(f", {k}={v!r}" for k, v in manifest["model_kwargs"].items())
    c = source.num_classes
    # by name, the tag's own pretrained_cfg would preprocess (its mean, std, crop_pct): the overlay puts the run's
    data = "".join(f",\n        {k}={tuple(v) if isinstance(v, list) else v!r}"
                   for k, v in (manifest.get("data_config") or {}).items())
    return f"""```python
import timm
model = timm.create_model("local-dir:path/to/this/folder", pretrained=True)
# or by name, through timm's usual pretrained path (strict=True):
model = timm.create_model(
    "{manifest["timm_tag"]}", pretrained=True, num_classes={c}{kwargs},
    pretrained_cfg_overlay=dict(file="path/to/this/folder/{WEIGHTS}", num_classes={c}{data}))
labels = model.pretrained_cfg.get("label_names")  # with local-dir:; else the classes below
```

Either way the model's pretrained_cfg holds the run's evaluation transform (size, resize, crop, interpolation, mean
and std): `timm.data.create_transform(**timm.data.resolve_model_data_config(model))` preprocesses as the run did."""


def load_timm(folder: Path, manifest: dict[str, Any], device: str = "cpu") -> Any:
    """The folder as an `sdlora.load` classifier: the registered backbone over the exported weights, the head, the
    run's evaluation transform (the manifest's `preprocess`)."""
    from safetensors.torch import load_file

    from sdlora.export.classifier import Classifier, image_preprocess

    options = {**manifest["backbone_config"]["options"], "model": manifest["timm_tag"], "pretrained": False,
               "pretrained_file": str(folder / manifest["weights"])}
    backbone = export_backbone(manifest, options).to(device)
    state = load_file(str(folder / manifest["weights"]))
    return Classifier(backbone, backbone, state["head.weight"].to(device), state["head.bias"].to(device),
                      manifest["classifier"], manifest["class_names"],
                      image_preprocess(manifest["preprocess"], backbone))


EXPORT_FORMATS.register("timm", "timm folder (save_for_hf): plain timm keys + head")(
    ExportFormat(write=write_timm, library="timm", how_to_load=timm_recipe, load=load_timm))
