"""The model card (README.md with Hugging Face front matter) written into every export folder."""

from __future__ import annotations

from typing import Any

from sdlora.export.common import CLASSIFIER_KINDS, ExportSource
from sdlora.provenance import package_version

METRICS = ("final_accuracy", "final_accuracy_task_mean", "average_incremental_accuracy", "forgetting",
           "backward_transfer")


def _curve(curve: list[float | None]) -> str:
    """The accuracy after each task; "-" after a task the run did not evaluate (`eval_every`)."""
    return ", ".join("-" if a is None else f"{a:.2f}" for a in curve) or "n/a"


def _metrics_table(metrics: dict[str, Any]) -> str:
    rows = [f"| {key} | {metrics[key]:.2f} |" for key in METRICS if metrics.get(key) is not None]
    return "\n".join(["| metric (%) | value |", "|---|---|", *rows]) if rows else "(no metrics recorded)"


def model_card(source: ExportSource, manifest: dict[str, Any], how_to_load: str, command: str, folder: str) -> str:
    record = source.record
    backbone = manifest["backbone"]
    tag = backbone.get("tag") or backbone.get("model") or backbone.get("name")
    sizes = record.get("task_sizes", [])
    tasks = "\n".join(f"{i + 1}. {', '.join(source.class_names[sum(sizes[:i]):sum(sizes[:i + 1])])}"
                      for i in range(len(sizes)))
    classes = ", ".join(source.class_names)
    # an hf export is a text classifier whose class ships in the folder (config.json auto_map): say so to the Hub
    remote = "pipeline_tag: text-classification\n" if manifest.get("remote_code") else ""
    custom = "- custom_code\n" if manifest.get("remote_code") else ""
    return f"""---
library_name: {manifest["library"]}
{remote}tags:
{custom}- sdlora
- continual-learning
- class-incremental
---

# {record.get("method", "sdlora")} classifier ({source.num_classes} classes, {len(sizes)} tasks)

Trained with sdlora {package_version()} (SD-LoRA, Wu et al., ICLR 2025): rehearsal-free
class-incremental learning; every adapter is merged into the weights, so the model costs exactly the
plain backbone.

- backbone: `{tag}` (weights sha256 `{backbone.get("weights_sha256", "?")}`)
- benchmark: {record.get("benchmark", "?")}, seed {record.get("seed", "?")}
- classifier: {source.classifier} ({CLASSIFIER_KINDS[source.classifier]})
- produced by: `{command or "sdlora export"}`

## How to load

{how_to_load}

## Metrics of the run (test split, percent)

{_metrics_table(record.get("metrics", {}))}

Accuracy after each task: {_curve(record.get("accuracy_curve", []))}

## Classes ({source.num_classes}, label id = position)

{classes}

## Tasks learned, in order

{tasks or "n/a"}

## Pushing to the Hugging Face Hub

    hf upload YOUR_NAME/YOUR_MODEL {folder} .

(`huggingface_hub`'s own command; `HfApi().upload_folder(repo_id=..., folder_path=...)` does the same.)
"""
