"""Exports that load the usual way: a timm folder, a transformers `save_pretrained` folder, a PEFT LoRA adapter.

    from sdlora.export import export_run_as
    export_run_as(restore_run(run_dir), folder, "timm", command="sdlora export ...")

Formats live in `EXPORT_FORMATS` (a registry); every folder also gets a model card (README.md) and
`sdlora_export.json`, the facts `sdlora.load` needs to rebuild the classifier.
"""

from __future__ import annotations

# the built-in formats register themselves on import
from sdlora.export import hf_format, peft_format, timm_format  # noqa: E402, F401, I001
from sdlora.export.common import EXPORT_FORMATS, ExportSource, export_run_as

__all__ = ["EXPORT_FORMATS", "ExportSource", "export_run_as"]
