"""SDLoRAConfig: every knob of SD-LoRA, declared once and validated on construction (errors name field and values).

The method's options (`sdlora.methods.options.SDLoRAOptions`) extend this class with the training-only keys;
`adapter_fields` picks the part the adapter layer stores. No torch here: the names it checks are the tables of
`sdlora.adapters.choices`, so the command line validates a method's options before torch is imported.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Annotated, Any, get_type_hints

from sdlora.adapters.choices import KERNEL_KINDS, MODE_DEFAULTS, NORM_NAMES
from sdlora.adapters.rank_schedule import check_rank, normalize_schedule, rank_for_task, rr_schedule
from sdlora.typed import PositiveInt, ReadWhen, check_read

KD_FITS = ("joint", "per_layer")
KD_RESIDUALS = ("relative", "paper")
VARIANTS = ("plain", "rr", "kd")
DEFAULT_TARGETS = ["blocks.*.attn.qkv[q,v]"]
DEFAULT_RANK = 10


def _choice(field_name: str, value: object, allowed: list[str] | tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{field_name} must be one of {list(allowed)}, got {value!r}")


@dataclass
class SDLoRAConfig:
    """Configuration of SD-LoRA adapters.

    targets: fnmatch patterns on module names, each with an optional output-slice suffix: ``[q,v]`` picks
        thirds of a fused qkv Linear (q first, k middle, v last); no suffix adapts the whole output.
    rank / rank_schedule: rank of every task, or a schedule ``[[first_task, rank], ...]`` (or ``"rr"``).
    variant: ``plain``; ``rr`` (rank_schedule from rank r: r, 0.8 r, 0.6 r from tasks 0, 4, 8, i.e. 10/8/6 at the
        default rank); ``kd`` (least-squares absorption).
    current_mode: ``continuous`` (default), ``official`` or ``paper``; see `sdlora.adapters.modes`.
    norm: ``product`` (||U D||_F, the paper) or ``factors`` (||U||_F ||D||_F, the official code); None is the
        mode's own (official: factors, paper: product). `continuous` never normalises: setting it is an error.
    magnitude_init: start value of a new magnitude; None uses the mode's default (0.8; paper: 1.0).
    kd_tau / kd_fit / kd_residual: SD-LoRA-KD; ``joint`` (default) fits one coefficient per old task over all
        matrices; the residual test is ``relative`` (< tau) or ``paper`` (absolute on unit directions, <= tau).
    kernel: forward/backward strategy of the adapted layers (``auto`` picks the cheapest per call).
    """

    targets: list[str] | None = None  # None: DEFAULT_TARGETS (timm ViT q, v); the method gives the backbone's
    rank: PositiveInt = DEFAULT_RANK  # of every task; variant rr: the first, which it shrinks (`rr_schedule`)
    rank_schedule: list[list[int]] | str | None = None
    variant: str = "plain"
    current_mode: str = "continuous"
    norm: str | None = None
    magnitude_init: float | None = None
    kd_tau: Annotated[float, ReadWhen("variant", ("kd",))] = 9e-4
    kd_fit: str = "joint"
    kd_residual: str = "relative"
    kernel: str = "auto"

    def __post_init__(self) -> None:
        if self.targets is not None:
            if isinstance(self.targets, str) or not isinstance(self.targets, list | tuple):
                raise ValueError(f"targets must be a list of pattern strings, got {self.targets!r}")
            if not self.targets or not all(isinstance(t, str) and t.strip() for t in self.targets):
                raise ValueError(f"targets must be a non-empty list of non-empty strings, got {self.targets!r}")
            self.targets = list(self.targets)
        self.rank = check_rank(self.rank, "rank")
        _choice("variant", self.variant, VARIANTS)
        self.rank_schedule = self._schedule()
        _choice("current_mode", self.current_mode, list(MODE_DEFAULTS))
        if self.norm is not None:
            _choice("norm", self.norm, list(NORM_NAMES))
            if MODE_DEFAULTS[self.current_mode].norm is None:
                raise ValueError(f"norm {self.norm!r} has no effect with current_mode {self.current_mode!r} "
                                 "(stored terms are never normalised, n_k = 1): remove `norm`, or use "
                                 "current_mode 'official' or 'paper'")
        _choice("kd_fit", self.kd_fit, KD_FITS)
        _choice("kd_residual", self.kd_residual, KD_RESIDUALS)
        _choice("kernel", self.kernel, ["auto", *KERNEL_KINDS])
        if self.magnitude_init is not None:
            if isinstance(self.magnitude_init, bool) or not isinstance(self.magnitude_init, int | float):
                raise ValueError(f"magnitude_init must be a number or None, got {self.magnitude_init!r}")
            if not math.isfinite(self.magnitude_init):
                raise ValueError(f"magnitude_init must be finite, got {self.magnitude_init!r}")
            self.magnitude_init = float(self.magnitude_init)
        if isinstance(self.kd_tau, bool) or not isinstance(self.kd_tau, int | float) or not self.kd_tau >= 0:
            raise ValueError(f"kd_tau must be a number >= 0, got {self.kd_tau!r}")
        self.kd_tau = float(self.kd_tau)
        # the Python API too (`SDLoRAConfig(rank=4, variant="rr")`), not only configs read through from_dict
        check_read(self, get_type_hints(type(self), include_extras=True), "")

    def _schedule(self) -> list[list[int]] | None:
        """The rank schedule in use: the given one, or variant rr's from `rank`; refuses a `rank` it leaves unread
        (a schedule starts at task 0) and an rr whose schedule is not its own (that is variant plain)."""
        given = None if self.rank_schedule is None else normalize_schedule(self.rank_schedule)
        if self.variant == "rr":
            own = rr_schedule(self.rank)
            # a saved config records the schedule it ran; runs before rr_schedule recorded the paper's at any rank
            if given is not None and given not in (own, normalize_schedule("rr")):
                raise ValueError(f"variant 'rr' shrinks the ranks from rank {self.rank} ({own}); with another "
                                 f"rank_schedule ({given}) it is variant 'plain': say that")
            return given or own
        if given is not None and self.rank != DEFAULT_RANK:
            raise ValueError(f"rank: {self.rank} would change nothing: a rank_schedule gives every task's rank, "
                             f"from task 0 (here {given}); remove it")
        return given

    @property
    def kd(self) -> bool:
        return self.variant == "kd"

    @property
    def resolved_targets(self) -> list[str]:
        return list(self.targets) if self.targets is not None else list(DEFAULT_TARGETS)

    @property
    def resolved_norm(self) -> str:
        """The normaliser in use ('product' for continuous, where it only serves diagnostics)."""
        return self.norm or MODE_DEFAULTS[self.current_mode].norm or "product"

    def rank_for_task(self, task: int) -> int:
        """Rank of 0-indexed `task` (schedule, else the constant `rank`)."""
        return rank_for_task(task, self.rank_schedule, self.rank)  # type: ignore[arg-type]

    @property
    def resolved_magnitude_init(self) -> float:
        if self.magnitude_init is not None:
            return self.magnitude_init
        return MODE_DEFAULTS[self.current_mode].magnitude_init

    def adapter_fields(self, **changes: Any) -> SDLoRAConfig:
        """A plain SDLoRAConfig with this object's adapter fields (drops a subclass's training-only keys)."""
        values = {f.name: getattr(self, f.name) for f in fields(SDLoRAConfig)}
        values.update(changes)
        return SDLoRAConfig(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SDLoRAConfig:
        data = dict(data)
        if "kd" in data:  # written before `variant` (v0.1 checkpoints): kd=true was variant kd
            kd = data.pop("kd")
            data.setdefault("variant", "kd" if kd else ("rr" if data.get("rank_schedule") else "plain"))
        mode = MODE_DEFAULTS.get(data.get("current_mode", "continuous"))
        if mode is not None and mode.norm is None:
            data.pop("norm", None)  # v0.1 recorded an (inert) norm for continuous mode
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SDLoRAConfig fields {unknown}; allowed: {sorted(known)}")
        return cls(**data)
