"""How the current task's direction is trained, frozen and how a new task starts (config key `current_mode`).

Per adapted matrix, while task t trains:  W = W0 + sum_{k<t} alpha_k U_k D_k / n_k + alpha_t * c_t * U_t D_t
(`sdlora.adapters.reference.dense_update` is this line as code). Each mode is one small class (PEFT-variant
style) with these hooks:

* ``init_factors``: initial U_t, D_t;
* ``start_task``: what happens to the stored terms and the magnitudes when a task starts;
* ``current_factor``: c_t, the factor on alpha_t * U_t D_t while training (None means 1);
* ``frozen_divisor``: n_t stored when the task ends (the past term is alpha_t U_t D_t / n_t).

Modes (timelines in docs/sdlora.md):

``official`` (the released code): U_t = 0, D_t ~ kaiming_uniform(a=sqrt(5)); trained unnormalised (c_t = 1).
Ending a task stores the trained term as it is (n_t = 1 for now), so the evaluation after task t scores the
trained function, as the released code's does. When the next task starts, the released code rebuilds the
model: every stored direction is divided by norm(U_k, D_k) and every magnitude is re-created at
`magnitude_init` (0.8); `start_task` does both, together. The last task's direction is never normalised.

``paper`` (Eq. 4): the current direction is normalised while it trains, c_t = 1 / norm(U_t, D_t) (gradient
flows through the norm). That needs a non-zero start: both factors get PyTorch's nn.Linear init
(kaiming_uniform(a=sqrt(5)): D_t ~ U(+-1/sqrt(in)), U_t ~ U(+-1/sqrt(r))). Frozen with the same n_t (so the
end of a task is continuous; the start is not, a random unit-norm direction appears). Magnitudes carry over;
the new slot starts at `magnitude_init`, default 1.0 ("all initialized to ones", paper Sec. 3.3).

``continuous`` (ours, the default): trained like official (U_t = 0, so nothing changes when a task starts),
frozen with n_t = 1, i.e. the frozen term is exactly the trained term alpha_t U_t D_t; magnitudes carry over.
The learned function is identical just before and just after every task boundary. (A shared alpha cannot
absorb per-matrix norms, so storing the direction unnormalised is the only exact choice; `norm` has no role.)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from sdlora.adapters.choices import MODE_DEFAULTS
from sdlora.adapters.magnitudes import Magnitudes
from sdlora.adapters.norms import NormFn, safe_divisor

if TYPE_CHECKING:
    from sdlora.adapters.layer import DirectionBank

MODES: dict[str, type[CurrentMode]] = {}


def register_mode(cls: type[CurrentMode]) -> type[CurrentMode]:
    """Register a mode under its `name`; its defaults (magnitude_init, norm) are `choices.MODE_DEFAULTS[name]`,
    which the config validates against without torch."""
    if cls.name not in MODE_DEFAULTS:
        raise ValueError(f"current mode {cls.name!r} has no entry in sdlora.adapters.choices.MODE_DEFAULTS")
    MODES[cls.name] = cls
    return cls


def kaiming_uniform_down(down: Tensor) -> None:
    """nn.Linear's default init for a [..., r, in] down factor: U(-1/sqrt(in), 1/sqrt(in))."""
    bound = 1.0 / math.sqrt(down.shape[-1])
    down.uniform_(-bound, bound)


class CurrentMode:
    """Base class: zero-start current direction, normalised when frozen, magnitudes carried over."""

    name: ClassVar[str]  # its defaults: sdlora.adapters.choices.MODE_DEFAULTS[name]

    @torch.no_grad()
    def init_factors(self, up: Tensor, down: Tensor) -> None:
        """U_t = 0 (so the new term starts at zero), D_t ~ kaiming_uniform(a=sqrt(5))."""
        up.zero_()
        kaiming_uniform_down(down)

    def start_task(self, banks: list[DirectionBank], magnitudes: Magnitudes, num_stored: int, init: float,
                   new_slot: bool, norm: NormFn) -> None:
        """A task starts: learned magnitudes carry over; a new direction gets a slot at `init`."""
        if new_slot:
            magnitudes.append(init)

    def current_factor(self, up: Tensor, down: Tensor, norm: NormFn) -> Tensor | None:
        """c_t per slice ([S]) multiplying alpha_t U_t D_t in the training forward; None means 1."""
        return None

    def frozen_divisor(self, up: Tensor, down: Tensor, norm: NormFn) -> Tensor:
        """n_t per slice ([S]) stored when the task ends."""
        return safe_divisor(norm(up, down)).detach()


def unit_divisor(up: Tensor) -> Tensor:
    """n_t = 1 per slice: the stored term is the trained term."""
    return torch.ones(up.shape[:-2], device=up.device, dtype=up.dtype)


@register_mode
class OfficialMode(CurrentMode):
    name = "official"

    def start_task(self, banks: list[DirectionBank], magnitudes: Magnitudes, num_stored: int, init: float,
                   new_slot: bool, norm: NormFn) -> None:
        """The released code's rebuild: stored directions divided by their norm, every magnitude at `init`."""
        for bank in banks:
            bank.normalize_stored(norm)
        magnitudes.reset(num_stored + int(new_slot), init)

    def frozen_divisor(self, up: Tensor, down: Tensor, norm: NormFn) -> Tensor:
        """Stored unnormalised: the model evaluated after the task is the trained one (normalised at the next)."""
        return unit_divisor(up)


@register_mode
class PaperMode(CurrentMode):
    name = "paper"

    @torch.no_grad()
    def init_factors(self, up: Tensor, down: Tensor) -> None:
        """Both factors random (nn.Linear init of the in->r and r->out maps): a non-zero direction."""
        kaiming_uniform_down(down)
        bound = 1.0 / math.sqrt(up.shape[-1])
        up.uniform_(-bound, bound)

    def current_factor(self, up: Tensor, down: Tensor, norm: NormFn) -> Tensor | None:
        return 1.0 / safe_divisor(norm(up, down))


@register_mode
class ContinuousMode(CurrentMode):
    name = "continuous"

    def frozen_divisor(self, up: Tensor, down: Tensor, norm: NormFn) -> Tensor:
        """n_t = 1: the frozen term equals the trained term, the function is continuous."""
        return unit_divisor(up)
