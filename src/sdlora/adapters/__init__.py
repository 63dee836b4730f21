"""SD-LoRA adapters: decoupled magnitude/direction low-rank updates injected into frozen Linear layers.

    from sdlora.adapters import SDLoRAConfig, SDLoRAAdapter
    adapter = SDLoRAAdapter(model, SDLoRAConfig(targets=["blocks.*.attn.qkv[q,v]"]))
"""

from sdlora.adapters.adapter import SDLoRAAdapter
from sdlora.adapters.config import SDLoRAConfig
from sdlora.adapters.kernels import KERNELS, choose_kernel
from sdlora.adapters.layer import DirectionBank, SDLoRALinear
from sdlora.adapters.magnitudes import Magnitudes
from sdlora.adapters.modes import MODES, CurrentMode
from sdlora.adapters.norms import NORMS, factors_norm, lowrank_inner, product_norm
from sdlora.adapters.rank_schedule import RR_SCHEDULE, rank_for_task

__all__ = [
    "KERNELS",
    "MODES",
    "NORMS",
    "RR_SCHEDULE",
    "CurrentMode",
    "DirectionBank",
    "Magnitudes",
    "SDLoRAAdapter",
    "SDLoRAConfig",
    "SDLoRALinear",
    "choose_kernel",
    "factors_norm",
    "lowrank_inner",
    "product_norm",
    "rank_for_task",
]
