"""The named choices `SDLoRAConfig` validates against, with no torch: current modes and their defaults, norms,
kernels.

The torch code holds one implementation per name here (`modes.MODES`, `norms.NORMS`, `kernels.KERNELS`; a mode
without an entry in `MODE_DEFAULTS` is refused when it registers, a test keeps the norms equal and the kernels
are built from `KERNEL_KINDS`). The config reads only these tables, so a method's options are checked before
torch is imported (the command line's early checks, `sdlora.cli_checks`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModeDefaults:
    """What a current mode (`sdlora.adapters.modes`) uses when the config leaves it open."""

    magnitude_init: float = 0.8  # start value of a new magnitude
    #: the normaliser the mode uses by default (None: the mode never normalises, `norm` has no role)
    norm: str | None = "product"


#: current mode -> its defaults: `official` normalises by ||U||_F ||D||_F (the released code), `paper` starts
#: magnitudes at 1 ("all initialized to ones", Sec. 3.3), `continuous` stores the trained term as it is (n_t = 1)
MODE_DEFAULTS: dict[str, ModeDefaults] = {
    "official": ModeDefaults(norm="factors"),
    "paper": ModeDefaults(magnitude_init=1.0),
    "continuous": ModeDefaults(norm=None),
}

#: normalisers n(U, D) of a direction (`sdlora.adapters.norms.NORMS`)
NORM_NAMES = ("product", "factors")

#: kernel -> (fold the adapter into a copy of the weight, backward kind): `sdlora.adapters.kernels.KERNELS`
KERNEL_KINDS: dict[str, tuple[bool, str]] = {
    "factored": (False, "proj"),
    "fused_proj": (True, "proj"),
    "fused_wgrad": (True, "wgrad"),
}
