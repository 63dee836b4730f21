"""Checkpoints: tensors in safetensors, everything else in JSON; nothing is loaded through pickle.

Writing is atomic: the tensor file gets a fresh name, then `latest.json` (which names it) is replaced
with os.replace, so a crash at any moment leaves the previous complete checkpoint readable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

POINTER = "latest.json"


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default))
    os.replace(tmp, path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, tuple | set):
        return list(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def save_checkpoint(folder: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    counter = int(meta.get("counter", 0))
    name = f"tensors-{counter:06d}.safetensors"
    tmp = folder / f".{name}.tmp"
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, folder / name)
    write_json_atomic(folder / POINTER, {**meta, "tensors": name})
    for old in folder.glob("tensors-*.safetensors"):
        if old.name != name:
            old.unlink()
    return folder / name


def load_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    pointer = folder / POINTER
    if not pointer.is_file():
        return None
    meta = json.loads(pointer.read_text())
    return meta, load_file(str(folder / meta["tensors"]))


def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Split an optimiser state dict into JSON and tensors."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    state_meta: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        state_meta[str(idx)] = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                state_meta[str(idx)][key] = value
    return {"state": state_meta, "param_groups": sd["param_groups"]}, tensors


def load_optimizer_state(opt: torch.optim.Optimizer, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in meta["state"].items()}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})
