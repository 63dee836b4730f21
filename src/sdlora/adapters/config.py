"""SDLoRAConfig: every knob of the adapter layer, validated on construction (errors name field and values)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from sdlora.adapters.kernels import KERNELS
from sdlora.adapters.modes import MODES
from sdlora.adapters.norms import NORMS
from sdlora.adapters.rank_schedule import check_rank, normalize_schedule, rank_for_task

KD_FITS = ("joint", "per_layer")


def _choice(field_name: str, value: object, allowed: list[str] | tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{field_name} must be one of {list(allowed)}, got {value!r}")


@dataclass
class SDLoRAConfig:
    """Configuration of SD-LoRA adapters.

    targets: fnmatch patterns on module names, each with an optional output-slice suffix: ``[q,v]`` picks
        thirds of a fused qkv Linear (q first, k middle, v last); no suffix adapts the whole output.
    rank / rank_schedule: rank of every task, or a schedule ``[[first_task, rank], ...]`` (or ``"rr"``).
    norm: ``product`` (||U D||_F, the paper) or ``factors`` (||U||_F ||D||_F, the official code).
    current_mode: ``continuous`` (default), ``official`` or ``paper``; see `sdlora.adapters.modes`.
    magnitude_init: start value of a new magnitude; None uses the mode's default (0.8; paper: 1.0).
    kd / kd_tau / kd_fit: SD-LoRA-KD; ``joint`` (default) fits one coefficient per old task over all matrices.
    kernel: forward/backward strategy of the adapted layers (``auto`` picks the cheapest per call).
    """

    targets: list[str] = field(default_factory=lambda: ["blocks.*.attn.qkv[q,v]"])
    rank: int = 10
    rank_schedule: list[list[int]] | str | None = None
    norm: str = "product"
    current_mode: str = "continuous"
    magnitude_init: float | None = None
    kd: bool = False
    kd_tau: float = 9e-4
    kd_fit: str = "joint"
    kernel: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.targets, str) or not isinstance(self.targets, list | tuple):
            raise ValueError(f"targets must be a list of pattern strings, got {self.targets!r}")
        if not self.targets or not all(isinstance(t, str) and t.strip() for t in self.targets):
            raise ValueError(f"targets must be a non-empty list of non-empty strings, got {self.targets!r}")
        self.targets = list(self.targets)
        self.rank = check_rank(self.rank, "rank")
        if self.rank_schedule is not None:
            self.rank_schedule = normalize_schedule(self.rank_schedule)
        _choice("norm", self.norm, list(NORMS))
        _choice("current_mode", self.current_mode, list(MODES))
        _choice("kd_fit", self.kd_fit, KD_FITS)
        _choice("kernel", self.kernel, ["auto", *KERNELS])
        if self.magnitude_init is not None:
            if isinstance(self.magnitude_init, bool) or not isinstance(self.magnitude_init, int | float):
                raise ValueError(f"magnitude_init must be a number or None, got {self.magnitude_init!r}")
            if not math.isfinite(self.magnitude_init):
                raise ValueError(f"magnitude_init must be finite, got {self.magnitude_init!r}")
            self.magnitude_init = float(self.magnitude_init)
        if not isinstance(self.kd, bool):
            raise ValueError(f"kd must be true or false, got {self.kd!r}")
        if isinstance(self.kd_tau, bool) or not isinstance(self.kd_tau, int | float) or not self.kd_tau >= 0:
            raise ValueError(f"kd_tau must be a number >= 0, got {self.kd_tau!r}")
        self.kd_tau = float(self.kd_tau)

    def rank_for_task(self, task: int) -> int:
        """Rank of 0-indexed `task` (schedule, else the constant `rank`)."""
        return rank_for_task(task, self.rank_schedule, self.rank)  # type: ignore[arg-type]

    @property
    def resolved_magnitude_init(self) -> float:
        if self.magnitude_init is not None:
            return self.magnitude_init
        return MODES[self.current_mode].default_magnitude_init

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SDLoRAConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SDLoRAConfig fields {unknown}; allowed: {sorted(known)}")
        return cls(**data)
