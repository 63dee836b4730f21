"""`sdlora export RUN --out FILE.safetensors`: the merged model in one file, no folder, no loader of its own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sdlora.export.common import check_target, class_names_of, classifier_kind


def export_run(run: Any, path: Path, overwrite: bool = False) -> dict[str, torch.Tensor]:
    """One safetensors file (a `RestoredRun`'s): merged backbone (`backbone.*`, a plain timm / transformers state
    dict) + head (`head.*`), the backbone, its config and the classifier kind in the metadata (`normalized_linear`:
    L2-normalise the feature first), the class names (JSON, index = head row) and, for images, the run's
    evaluation transform (`preprocess`, JSON)."""
    from safetensors.torch import save_file

    from sdlora.engine.build import run_preprocess

    check_target(path, overwrite)
    run.method.check_exportable()
    state = {k: v.contiguous().cpu() for k, v in run.method.export_state_dict().items()}
    meta = {
        "format": "sdlora-export-1",
        "backbone": json.dumps(run.method.backbone.info()),
        "config": json.dumps({"backbone": run.cfg.backbone.name, "options": run.cfg.backbone.options}),
        "num_classes": str(state["head.weight"].shape[0]),
        "classifier": classifier_kind(run.method),  # how head.* applies (sdlora.export.common.CLASSIFIER_KINDS)
        "class_names": json.dumps(class_names_of(run, state["head.weight"].shape[0])),
    }
    preprocess = run_preprocess(run.cfg)
    if preprocess:
        meta["preprocess"] = json.dumps(preprocess)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=meta)
    return state
