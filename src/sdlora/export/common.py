"""What every export format needs from a finished run, the format registry, and the shared files."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdlora.registry import Registry

MANIFEST = "sdlora_export.json"
#: classifier kinds: how logits come from the pooled feature f
CLASSIFIER_KINDS = {
    "linear": "logits = f W^T + b",
    "cosine": "logits = normalize(f) W^T (W = unit-norm class means; argmax equals that of f W^T)",
    "normalized_linear": "logits = normalize(f) W^T + b (the LDA head on the L2-normalised feature)",
}
#: the kinds whose W applies to the L2-normalised feature
NORMALIZED_KINDS = ("cosine", "normalized_linear")


def classifier_kind(method: Any) -> str:
    """How the exported head applies to the pooled feature: a key of `CLASSIFIER_KINDS`."""
    head = method.class_head
    return "linear" if head is None else str(head.export_kind)


def class_names_of(run: Any, num_classes: int) -> list[str]:
    """A `RestoredRun`'s class names in head-row order (trained, then learned); their count must be the head's
    (`restore_run` lets only a finished run through: a mismatch is a broken folder, never a silent relabelling)."""
    names = run.run.trained_classes
    if len(names) != num_classes:
        raise ValueError(f"{run.folder}: the head has {num_classes} classes but the run names {len(names)}")
    return names


@dataclass
class ExportSource:
    """A finished run, reduced to what exports write: merged backbone, classifier, names and record."""

    backbone: Any  # sdlora.backbones.base.Backbone, adapters still injected (unmerged)
    method: Any  # sdlora.methods.base.Method
    merged_backbone: dict[str, torch.Tensor]
    head_weight: torch.Tensor
    head_bias: torch.Tensor
    classifier: str
    class_names: list[str]
    record: dict[str, Any] = field(default_factory=dict)  # results.json of the run (may be empty)
    backbone_config: dict[str, Any] = field(default_factory=dict)  # {"name", "options"} of the config
    preprocess: dict[str, Any] = field(default_factory=dict)  # `transform_spec` of an image run ({} for text)

    @classmethod
    def from_run(cls, run: Any) -> ExportSource:
        """From `sdlora.engine.restore.RestoredRun`."""
        from sdlora.engine.build import run_preprocess

        method = run.method
        state = {k: v.detach().cpu() for k, v in method.export_state_dict().items()}
        merged = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        return cls(backbone=method.backbone, method=method, merged_backbone=merged,
                   head_weight=state["head.weight"], head_bias=state["head.bias"],
                   classifier=classifier_kind(method), class_names=class_names_of(run, state["head.weight"].shape[0]),
                   record=run.run.record, backbone_config={"name": run.cfg.backbone.name,
                                                   "options": dict(run.cfg.backbone.options)},
                   preprocess=run_preprocess(run.cfg) or {})

    @property
    def num_classes(self) -> int:
        return self.head_weight.shape[0]


@dataclass(frozen=True)
class ExportFormat:
    """One registered format: `write(source, folder) -> facts` (merged into the manifest), a loading recipe, and
    `load(folder, manifest, device)`: the folder back as an `sdlora.load` classifier
    (`export.classifier.Classifier`)."""

    write: Callable[[ExportSource, Path], dict[str, Any]]
    library: str
    how_to_load: Callable[[ExportSource, dict[str, Any]], str]
    load: Callable[[Path, dict[str, Any], str], Any]


def export_backbone(manifest: dict[str, Any], options: dict[str, Any]) -> Any:
    """The registered backbone of an export's manifest, built with `options`, in eval mode."""
    from sdlora.config import resolve_options
    from sdlora.registry import BACKBONES

    entry = BACKBONES.get(manifest["backbone_config"]["name"])
    return entry(resolve_options(entry.Options, options, "backbone.options")).eval()


EXPORT_FORMATS: Registry[ExportFormat] = Registry("export format")


def check_target(path: Path, overwrite: bool) -> None:
    """An export never mixes into what is already there: a non-empty folder or an existing file needs --overwrite."""
    path = Path(path)
    taken = path.is_file() or (path.is_dir() and any(path.iterdir()))
    if taken and not overwrite:
        raise FileExistsError(f"{path} already exists and is not empty; choose another --out or pass --overwrite "
                              "to replace it")


def export_run_as(run: Any, folder: Path, fmt: str, command: str = "", overwrite: bool = False) -> dict[str, Any]:
    """Write `run` (a RestoredRun) into `folder` in format `fmt`, with the manifest and the model card. The folder is
    written beside its place and moved there at the end: a refused or failed export leaves nothing behind, and
    `overwrite` replaces the whole folder (no stale files of an earlier export stay)."""
    import shutil

    from sdlora.export.card import model_card

    entry = EXPORT_FORMATS.get(fmt)
    folder = Path(folder)
    check_target(folder, overwrite)
    run.method.check_exportable()
    source = ExportSource.from_run(run)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.exporting"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        facts = entry.write(source, staging)
        manifest = {
            "format": fmt,
            "library": entry.library,
            "backbone": source.backbone.info(),
            "backbone_config": source.backbone_config,
            "classifier": source.classifier,
            "class_names": source.class_names,
            "tasks": len(source.record.get("task_sizes", [])),
            "preprocess": source.preprocess,
            **facts,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        (staging / "README.md").write_text(model_card(source, manifest, entry.how_to_load(source, manifest),
                                                      command, str(folder)))
        if folder.is_dir():
            shutil.rmtree(folder)
        elif folder.exists():
            folder.unlink()
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest
