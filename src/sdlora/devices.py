"""Moving batches between devices, for the engine, the methods and serving (a bottom module: no sdlora imports)."""

from __future__ import annotations

from typing import Any

import torch


def move_to(inputs: Any, device: torch.device | str) -> Any:
    """Move a tensor, or a dict / list of tensors, to `device`."""
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device, non_blocking=True)
    if isinstance(inputs, dict):
        return {k: move_to(v, device) for k, v in inputs.items()}
    if isinstance(inputs, list | tuple):
        return type(inputs)(move_to(v, device) for v in inputs)
    return inputs
