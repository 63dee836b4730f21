"""SD-LoRA adapters: decoupled magnitude/direction low-rank updates injected into frozen Linear layers.

    from sdlora.adapters import SDLoRAConfig, SDLoRAAdapter
    adapter = SDLoRAAdapter(model, SDLoRAConfig(targets=["blocks.*.attn.qkv[q,v]"]))

The names below load on first use (PEP 562), each from its module: `SDLoRAConfig` (`config`, with the torch-free
tables of `choices`) is what the command line validates a method's options with before torch is imported, so
importing this package must not import torch itself.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> the module of this package that defines it
_HOMES = {
    "KERNELS": "kernels",
    "MODES": "modes",
    "NORMS": "norms",
    "RR_SCHEDULE": "rank_schedule",
    "CurrentMode": "modes",
    "DirectionBank": "layer",
    "Magnitudes": "magnitudes",
    "SDLoRAAdapter": "adapter",
    "SDLoRAConfig": "config",
    "SDLoRALinear": "layer",
    "choose_kernel": "kernels",
    "factors_norm": "norms",
    "lowrank_inner": "norms",
    "product_norm": "norms",
    "rank_for_task": "rank_schedule",
}

__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)


if TYPE_CHECKING:  # what type checkers see; at run time `__getattr__` imports the same names
    # ruff: noqa: F401
    from sdlora.adapters.adapter import SDLoRAAdapter
    from sdlora.adapters.config import SDLoRAConfig
    from sdlora.adapters.kernels import KERNELS, choose_kernel
    from sdlora.adapters.layer import DirectionBank, SDLoRALinear
    from sdlora.adapters.magnitudes import Magnitudes
    from sdlora.adapters.modes import MODES, CurrentMode
    from sdlora.adapters.norms import NORMS, factors_norm, lowrank_inner, product_norm
    from sdlora.adapters.rank_schedule import RR_SCHEDULE, rank_for_task
