"""Adapter files: tensors in safetensors (no pickle), the structure as JSON in the file's metadata."""

from __future__ import annotations

import json
import os
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

METADATA_KEY = "sdlora_adapter"


def write_adapter_file(path: str | os.PathLike[str], structure: dict[str, Any],
                       tensors: dict[str, Tensor]) -> None:
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    save_file(data, os.fspath(path), metadata={METADATA_KEY: json.dumps(structure)})


def read_adapter_file(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    with safe_open(os.fspath(path), framework="pt") as f:
        meta = f.metadata() or {}
        if METADATA_KEY not in meta:
            raise ValueError(f"{os.fspath(path)} is not an SD-LoRA adapter file "
                             f"(no {METADATA_KEY!r} metadata)")
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    return json.loads(meta[METADATA_KEY]), tensors
